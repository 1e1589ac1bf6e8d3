//! The graph: nodes (ops) in a petgraph `StableDiGraph`, connected through named tensor values.

use crate::stored::{SpillFile, StoredTensor, SPILL_MIN_BYTES};
use crate::{Attribute, DType, IrError, Result, Tensor, TensorType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Identifies a node; stable across removals of other nodes.
pub type NodeId = NodeIndex<u32>;

/// Identifies a tensor value of a [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// A tensor value: a graph input, a constant (initializer) or a node output.
#[derive(Debug, Clone)]
pub struct Value {
    /// Name, unique in the graph (ONNX value name).
    pub name: String,
    /// Static type, when known (declared or inferred).
    pub ty: Option<TensorType>,
    /// The node output that defines it, if any.
    pub producer: Option<(NodeId, usize)>,
    /// The data, for constants (initializers and folded values) held in memory.
    pub constant: Option<Arc<Tensor>>,
    /// Where the data is, for constants kept in a file (large external data, spilled results):
    /// read with [`Graph::load_constant`]. At most one of `constant` and `stored` is set.
    pub stored: Option<StoredTensor>,
    /// Nodes that read it (a node appears once per input slot that reads it).
    pub consumers: Vec<NodeId>,
}

/// One operation: an op type from a domain at an opset version, with attributes.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (made unique and non-empty on import).
    pub name: String,
    /// Op type, e.g. `MatMul`.
    pub op_type: String,
    /// Op domain: `""` for the ONNX default domain, `"fpx"` for fpx's own ops.
    pub domain: String,
    /// The opset version of the node's domain that the model imports.
    pub opset: i64,
    /// Attributes by name.
    pub attrs: BTreeMap<String, Attribute>,
    /// Inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// A node with no attributes.
    pub fn new(
        name: impl Into<String>,
        op_type: impl Into<String>,
        opset: i64,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<ValueId>,
    ) -> Self {
        Node { name: name.into(), op_type: op_type.into(), domain: String::new(), opset, attrs: BTreeMap::new(), inputs, outputs }
    }

    /// An int attribute, or `default`.
    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        match self.attrs.get(name) {
            Some(Attribute::Int(v)) => *v,
            _ => default,
        }
    }

    /// A float attribute, or `default`.
    pub fn attr_f(&self, name: &str, default: f32) -> f32 {
        match self.attrs.get(name) {
            Some(Attribute::Float(v)) => *v,
            _ => default,
        }
    }

    /// A string attribute, or `default`.
    pub fn attr_s<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        match self.attrs.get(name) {
            Some(Attribute::String(v)) => v,
            _ => default,
        }
    }

    /// An ints attribute, if present.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name) {
            Some(Attribute::Ints(v)) => Some(v),
            _ => None,
        }
    }

    /// A floats attribute, if present.
    pub fn attr_floats(&self, name: &str) -> Option<&[f32]> {
        match self.attrs.get(name) {
            Some(Attribute::Floats(v)) => Some(v),
            _ => None,
        }
    }

    /// A tensor attribute, if present.
    pub fn attr_tensor(&self, name: &str) -> Option<&Tensor> {
        match self.attrs.get(name) {
            Some(Attribute::Tensor(v)) => Some(v),
            _ => None,
        }
    }

    /// `op 'name'` — how errors refer to the node.
    pub fn describe(&self) -> String {
        format!("{} '{}'", self.op_type, self.name)
    }
}

/// A computation graph. Nodes live in a `StableDiGraph` whose edges run from a value's
/// producer to each consumer (weighted by the value); values are kept in a table by id.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    dag: StableDiGraph<Node, ValueId>,
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    /// Graph inputs, in order (initializers are not inputs here).
    pub inputs: Vec<ValueId>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueId>,
    /// Opset imports: domain (`""` = ONNX) → version.
    pub opsets: BTreeMap<String, i64>,
    /// Where large constants go instead of memory ([`Graph::spill_large_constants`]).
    spill: Option<Arc<SpillFile>>,
}

/// Writes large constants to a compile's spill file without borrowing the graph
/// ([`Graph::spiller`]); empty when the graph has no spill file.
#[derive(Debug, Clone, Default)]
pub struct Spiller(Option<Arc<SpillFile>>);

impl Spiller {
    /// Writes `data` to the spill file, when there is one and `data` is large enough to go
    /// there ([`Graph::set_constant`]'s rule: [`SPILL_MIN_BYTES`] or more); `None` otherwise.
    pub fn spill(&self, data: &Tensor) -> Option<std::io::Result<StoredTensor>> {
        let spill = self.0.as_ref().filter(|_| data.len() * data.dtype().size_bytes() >= SPILL_MIN_BYTES)?;
        Some(spill.store(data))
    }
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph { name: name.into(), ..Default::default() }
    }

    /// The value with this name, created (untyped, undefined) if it does not exist yet.
    pub fn value_named(&mut self, name: &str) -> ValueId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name: name.to_string(), ty: None, producer: None, constant: None, stored: None, consumers: Vec::new() });
        self.by_name.insert(name.to_string(), id);
        id
    }

    /// A new value with a name not used yet, derived from `hint`.
    pub fn fresh_value(&mut self, hint: &str) -> ValueId {
        let mut name = hint.to_string();
        let mut i = 0;
        while self.by_name.contains_key(&name) {
            i += 1;
            name = format!("{hint}__{i}");
        }
        self.value_named(&name)
    }

    /// Looks a value up by name.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    /// The value with this id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    /// Sets a value's static type (its producer, consumers and data are kept by the graph).
    pub fn set_type(&mut self, id: ValueId, ty: Option<TensorType>) {
        self.values[id.0 as usize].ty = ty;
    }

    /// All value ids.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.values.len() as u32).map(ValueId)
    }

    /// Declares a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Result<ValueId> {
        let id = self.value_named(name);
        if self.is_defined(id) {
            return Err(IrError::MultipleProducers { value: name.to_string(), node: "<graph input>".into() });
        }
        self.values[id.0 as usize].ty = Some(ty);
        self.inputs.push(id);
        Ok(id)
    }

    /// Makes `id` a constant holding `data` (an initializer or a folded value). With a spill
    /// file attached ([`Graph::spill_large_constants`]), data of [`SPILL_MIN_BYTES`] or more is
    /// written there and kept as a [`StoredTensor`]; if that write fails it stays in memory.
    pub fn set_constant(&mut self, id: ValueId, data: Arc<Tensor>) {
        if let Some(Ok(stored)) = self.spiller().spill(&data) {
            self.set_stored(id, stored);
            return;
        }
        let v = &mut self.values[id.0 as usize];
        v.ty = Some(TensorType::fixed(data.dtype(), data.shape()));
        v.stored = None;
        v.constant = Some(data);
    }

    /// A handle that writes constants to this graph's spill file (if one is attached), apart
    /// from the graph: a pass may spill its results on other threads while it changes the
    /// graph, then [`Graph::set_stored`] them.
    pub fn spiller(&self) -> Spiller {
        Spiller(self.spill.clone())
    }

    /// Makes `id` a constant whose data stays in a file until it is read.
    pub fn set_stored(&mut self, id: ValueId, data: StoredTensor) {
        let v = &mut self.values[id.0 as usize];
        v.ty = Some(TensorType::fixed(data.dtype(), data.shape()));
        v.constant = None;
        v.stored = Some(data);
    }

    /// Adds a constant (initializer) value named `name`.
    pub fn add_constant(&mut self, name: &str, data: Tensor) -> Result<ValueId> {
        let id = self.value_named(name);
        if self.is_defined(id) {
            return Err(IrError::MultipleProducers { value: name.to_string(), node: "<initializer>".into() });
        }
        self.set_constant(id, Arc::new(data));
        Ok(id)
    }

    /// Adds a constant (initializer) named `name` whose data stays in a file.
    pub fn add_stored(&mut self, name: &str, data: StoredTensor) -> Result<ValueId> {
        let id = self.value_named(name);
        if self.is_defined(id) {
            return Err(IrError::MultipleProducers { value: name.to_string(), node: "<initializer>".into() });
        }
        self.set_stored(id, data);
        Ok(id)
    }

    /// The data of a constant held in memory. `None` for a value that is not a constant and for
    /// one kept in a file ([`Graph::is_constant`] tells them apart, [`Graph::load_constant`]
    /// reads either): passes that look at small constants (shapes, scalars, biases) use this.
    pub fn constant(&self, id: ValueId) -> Option<&Arc<Tensor>> {
        self.value(id).constant.as_ref()
    }

    /// The file-kept data of a constant, if it is one.
    pub fn stored(&self, id: ValueId) -> Option<&StoredTensor> {
        self.value(id).stored.as_ref()
    }

    /// True for a constant, in memory or in a file.
    pub fn is_constant(&self, id: ValueId) -> bool {
        let v = self.value(id);
        v.constant.is_some() || v.stored.is_some()
    }

    /// A constant's element type and shape, without reading file-kept data.
    pub fn constant_type(&self, id: ValueId) -> Option<(DType, &[usize])> {
        let v = self.value(id);
        match (&v.constant, &v.stored) {
            (Some(t), _) => Some((t.dtype(), t.shape())),
            (None, Some(s)) => Some((s.dtype(), s.shape())),
            (None, None) => None,
        }
    }

    /// Bytes of a constant's data as the model stores it (a 16-bit weight the upcast made `f32`
    /// still counts 2 bytes per element while it is kept in its file).
    pub fn constant_stored_bytes(&self, id: ValueId) -> Option<usize> {
        let v = self.value(id);
        match (&v.constant, &v.stored) {
            (Some(t), _) => Some(t.len() * t.dtype().size_bytes()),
            (None, Some(s)) => Some(s.stored_bytes()),
            (None, None) => None,
        }
    }

    /// A constant's data, read from its file if it is kept in one (each call reads it again:
    /// hold the result only while it is needed). `Ok(None)` for a value that is not a constant.
    pub fn load_constant(&self, id: ValueId) -> Result<Option<Arc<Tensor>>> {
        let v = self.value(id);
        match (&v.constant, &v.stored) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(s)) => {
                s.load().map(|t| Some(Arc::new(t))).map_err(|message| IrError::ConstantData { value: v.name.clone(), message })
            }
            (None, None) => Ok(None),
        }
    }

    /// Drops a constant's data (memory or file): the value is left undefined.
    pub fn clear_constant(&mut self, id: ValueId) {
        let v = &mut self.values[id.0 as usize];
        v.constant = None;
        v.stored = None;
    }

    /// Reads every file-kept constant into memory (what an executor running the graph needs).
    pub fn load_stored_constants(&mut self) -> Result<()> {
        self.load_stored_constants_except(&|_| false)
    }

    /// Reads every file-kept constant into memory but those `keep` picks (which the caller
    /// reads in place, e.g. packed weights a native kernel takes straight from a mapped artifact).
    pub fn load_stored_constants_except(&mut self, keep: &dyn Fn(ValueId) -> bool) -> Result<()> {
        for i in 0..self.values.len() {
            if self.values[i].stored.is_none() || keep(ValueId(i as u32)) {
                continue;
            }
            if let Some(s) = self.values[i].stored.take() {
                match s.load() {
                    Ok(t) => self.values[i].constant = Some(Arc::new(t)),
                    Err(message) => {
                        let value = self.values[i].name.clone();
                        self.values[i].stored = Some(s);
                        return Err(IrError::ConstantData { value, message });
                    }
                }
            }
        }
        Ok(())
    }

    /// From now on, constants of [`SPILL_MIN_BYTES`] or more that passes create go to `spill`
    /// instead of memory; those already in memory move there now. A compile does this so its
    /// memory follows the largest tensor it works on, not the model's size.
    pub fn spill_large_constants(&mut self, spill: Arc<SpillFile>) -> std::io::Result<()> {
        for v in &mut self.values {
            if let Some(t) = v.constant.as_ref().filter(|t| t.len() * t.dtype().size_bytes() >= SPILL_MIN_BYTES) {
                v.stored = Some(spill.store(t)?);
                v.constant = None;
            }
        }
        self.spill = Some(spill);
        Ok(())
    }

    /// True when a graph input, constant or node output defines the value.
    pub fn is_defined(&self, id: ValueId) -> bool {
        let v = self.value(id);
        v.producer.is_some() || v.constant.is_some() || v.stored.is_some() || self.inputs.contains(&id)
    }

    /// Adds a node, connecting it to the producers of its inputs and the consumers of its outputs.
    /// Fails if one of its outputs is already defined.
    pub fn add_node(&mut self, node: Node) -> Result<NodeId> {
        for &o in &node.outputs {
            if self.is_defined(o) {
                return Err(IrError::MultipleProducers { value: self.value(o).name.clone(), node: node.name.clone() });
            }
        }
        let inputs: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        let outputs = node.outputs.clone();
        let id = self.dag.add_node(node);
        for v in inputs {
            self.values[v.0 as usize].consumers.push(id);
            if let Some((p, _)) = self.value(v).producer {
                self.dag.add_edge(p, id, v);
            }
        }
        for (slot, o) in outputs.into_iter().enumerate() {
            self.values[o.0 as usize].producer = Some((id, slot));
            let consumers = self.value(o).consumers.clone();
            for c in consumers {
                self.dag.add_edge(id, c, o);
            }
        }
        Ok(id)
    }

    /// Removes a node; its outputs become undefined and it stops consuming its inputs.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.dag.remove_node(id)?;
        for v in node.inputs.iter().flatten() {
            let cons = &mut self.values[v.0 as usize].consumers;
            if let Some(pos) = cons.iter().position(|&c| c == id) {
                cons.remove(pos);
            }
        }
        for &o in &node.outputs {
            self.values[o.0 as usize].producer = None;
        }
        Some(node)
    }

    /// Points input `slot` of node `id` at another value.
    pub fn set_node_input(&mut self, id: NodeId, slot: usize, new: Option<ValueId>) {
        let mut node = self.remove_node(id).expect("node exists");
        node.inputs[slot] = new;
        let new_id = self.add_node(node).expect("outputs were just freed");
        debug_assert_eq!(new_id, id, "StableGraph reuses the freed index");
    }

    /// Makes every reader of `old` (and the graph outputs) read `new` instead.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        let consumers = self.value(old).consumers.clone();
        let mut seen = Vec::new();
        for c in consumers {
            if seen.contains(&c) {
                continue;
            }
            seen.push(c);
            let slots: Vec<usize> = self.node(c).inputs.iter().enumerate().filter(|(_, v)| **v == Some(old)).map(|(i, _)| i).collect();
            for s in slots {
                self.set_node_input(c, s, Some(new));
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    /// Mutable access to a node's name and attributes. Change inputs only through
    /// [`Graph::set_node_input`], which keeps the edges right.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id]
    }

    /// Ids of all nodes, in insertion order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.dag.node_indices().collect()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// The underlying petgraph graph (read-only).
    pub fn dag(&self) -> &StableDiGraph<Node, ValueId> {
        &self.dag
    }

    /// Nodes in an order where each comes after the producers of its inputs; an error names a node on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        petgraph::algo::toposort(&self.dag, None).map_err(|c| {
            let n = &self.dag[c.node_id()];
            IrError::Cycle { node: n.name.clone(), op: n.op_type.clone() }
        })
    }

    /// The opset version the graph imports for `domain` (`""` and `"ai.onnx"` are the same).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.opsets.get(crate::canonical_domain(domain)).copied()
    }

    /// Drops the data of constants that nothing reads (no consumer, not a graph output);
    /// returns how many were dropped.
    pub fn remove_unused_constants(&mut self) -> usize {
        let mut dropped = 0;
        for (i, v) in self.values.iter_mut().enumerate() {
            if (v.constant.is_some() || v.stored.is_some()) && v.consumers.is_empty() && !self.outputs.contains(&ValueId(i as u32)) {
                v.constant = None;
                v.stored = None;
                dropped += 1;
            }
        }
        dropped
    }

    /// Number of elements over all constants (the parameter count).
    pub fn parameter_count(&self) -> usize {
        self.values.iter().map(|v| v.constant.as_ref().map(|t| t.len()).or(v.stored.as_ref().map(|s| s.len())).unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn chain() -> (Graph, Vec<NodeId>) {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2])).unwrap();
        let a = g.value_named("a");
        let b = g.value_named("b");
        // Added out of order: the consumer first.
        let n2 = g.add_node(Node::new("n2", "Relu", 17, vec![Some(a)], vec![b])).unwrap();
        let n1 = g.add_node(Node::new("n1", "Neg", 17, vec![Some(x)], vec![a])).unwrap();
        g.outputs.push(b);
        (g, vec![n1, n2])
    }

    #[test]
    fn the_spiller_writes_large_constants_only_and_only_with_a_spill_file() {
        let small = Tensor::from(ndarray::Array1::from_vec(vec![7u8; 16]).into_dyn());
        let bytes = |len: usize| Tensor::from(ndarray::Array1::from_vec((0..len).map(|i| (i * 31 % 251) as u8).collect()).into_dyn());
        let large = bytes(SPILL_MIN_BYTES + 3);
        let mut g = Graph::new("t");
        assert!(g.spiller().spill(&large).is_none(), "no spill file attached");
        g.spill_large_constants(SpillFile::create_in(&std::env::temp_dir()).unwrap()).unwrap();
        let spiller = g.spiller();
        assert!(spiller.spill(&small).is_none(), "below SPILL_MIN_BYTES");
        // From another thread, while the graph is free to change.
        let stored = std::thread::spawn(move || spiller.spill(&large).unwrap().unwrap()).join().unwrap();
        let v = g.value_named("w");
        g.set_stored(v, stored.clone());
        assert_eq!(g.load_constant(v).unwrap().as_deref(), Some(&bytes(SPILL_MIN_BYTES + 3)));
        assert_eq!(stored.loaded_crc32(), Some(crc32fast::hash(&crate::le_bytes::tensor_bytes(&stored.load().unwrap()))));
    }

    #[test]
    fn edges_follow_values_whatever_the_insertion_order() {
        let (g, ids) = chain();
        assert_eq!(g.topo_order().unwrap(), ids);
        assert_eq!(g.dag().edge_count(), 1);
    }

    #[test]
    fn second_producer_is_rejected() {
        let (mut g, _) = chain();
        let a = g.find_value("a").unwrap();
        let err = g.add_node(Node::new("dup", "Neg", 17, vec![], vec![a])).unwrap_err();
        assert!(err.to_string().contains("'a' is defined more than once"), "{err}");
    }

    #[test]
    fn cycle_is_reported_with_a_node_name() {
        let mut g = Graph::new("c");
        let a = g.value_named("a");
        let b = g.value_named("b");
        g.add_node(Node::new("p", "Neg", 17, vec![Some(b)], vec![a])).unwrap();
        g.add_node(Node::new("q", "Neg", 17, vec![Some(a)], vec![b])).unwrap();
        let err = g.topo_order().unwrap_err().to_string();
        assert!(err.contains("cycle through node"), "{err}");
    }

    #[test]
    fn replace_all_uses_rewires_edges() {
        let (mut g, ids) = chain();
        let x = g.find_value("x").unwrap();
        let a = g.find_value("a").unwrap();
        g.replace_all_uses(a, x);
        assert_eq!(g.node(ids[1]).inputs, vec![Some(x)]);
        assert!(g.value(a).consumers.is_empty());
        assert_eq!(g.dag().edge_count(), 0);
    }
}
