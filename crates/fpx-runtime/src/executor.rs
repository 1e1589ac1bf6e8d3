//! The CPU executor: runs the nodes of a graph in topological order with the registered kernels.

use crate::kernels::alloc;
use crate::kernels::{KernelFn, KernelRegistry, OwnedKernelFn};
use crate::native::{prepare_activations, NativeLibrary, NativeQmm, PreparedActivations};
use crate::{KernelError, RuntimeError};
use fpx_ir::ops::quant_matmul::{self, Epilogue};
use fpx_ir::pass::NodeEvaluator;
use fpx_ir::{Dim, Graph, Node, NodeId, Tensor, TensorBudget, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How one node runs: a reference kernel, or a natively compiled QuantMatMul.
#[derive(Clone)]
enum Step {
    Kernel(KernelFn),
    /// The compiled kernels, the node's fused epilogue and its constant operands in f32.
    Native(NativeQmm, Epilogue, Arc<NativeConstants>),
}

/// A native QuantMatMul's constant operands (graph constants), converted to f32 once when the
/// executor is built rather than on every run; `None` where the operand is absent or computed.
#[derive(Debug, Default)]
struct NativeConstants {
    bias: Option<Vec<f32>>,
    lorc: Option<crate::kernels::quant::LorcFactors>,
    /// How the node stores its LoRC factors (for factors computed at run time).
    lorc_storage: fpx_quant::lorc::FactorStorage,
}

impl NativeConstants {
    fn of(graph: &Graph, node: &fpx_ir::Node, gemm: &fpx_quant::QuantGemm) -> Result<NativeConstants, KernelError> {
        // Constants a mapped artifact keeps in its file (uint8 tensors of 1 MiB or more, such as
        // the quantized LoRC factors of a very wide product) are read here, once.
        let loaded = |i: usize| -> Result<Option<std::sync::Arc<fpx_ir::Tensor>>, KernelError> {
            match node.inputs.get(i).copied().flatten() {
                Some(v) => graph.load_constant(v).map_err(|e| KernelError::new(e.to_string())),
                None => Ok(None),
            }
        };
        let (bias, u, v, scales) = (
            loaded(3)?,
            loaded(quant_matmul::LORC_U_INPUT)?,
            loaded(quant_matmul::LORC_V_INPUT)?,
            loaded(quant_matmul::LORC_SCALES_INPUT)?,
        );
        let bias = bias.map(|b| b.to_f32().iter().copied().collect());
        let lorc_storage = quant_matmul::lorc_storage(node).map_err(|e| KernelError::new(e.to_string()))?;
        let scales_given = node.inputs.get(quant_matmul::LORC_SCALES_INPUT).copied().flatten().is_some();
        let lorc = match (u.as_deref(), v.as_deref(), scales.as_deref()) {
            // Every factor input given is a constant: convert once.
            (Some(u), Some(v), scales) if scales.is_some() == scales_given => crate::kernels::quant::LorcFactors::from_inputs(
                crate::kernels::quant::LorcInputs { u: Some(u), v: Some(v), scales, storage: lorc_storage },
                gemm.k,
                gemm.n,
            )?,
            _ => None,
        };
        Ok(NativeConstants { bias, lorc, lorc_storage })
    }
}

/// Wall time of one node in a profiled run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTiming {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// Whether a native (compiled) kernel ran.
    pub native: bool,
    /// Seconds.
    pub seconds: f64,
}

/// A by-value kernel and the input slots it may take: values no later node reads (and not
/// graph outputs, constants, or given in two slots of the node).
#[derive(Clone)]
struct Consume {
    kernel: OwnedKernelFn,
    slots: Vec<usize>,
}

/// A graph prepared to run on the CPU: kernels resolved, order fixed, buffer lifetimes known.
pub struct CpuExecutor {
    graph: Graph,
    steps: Vec<(NodeId, Step)>,
    /// Per step, the by-value kernel variant when the step can take an input by value.
    consume: Vec<Option<Consume>>,
    /// Keeps native code mapped while its function pointers are in `steps`.
    _libraries: Vec<Arc<NativeLibrary>>,
    /// For each value, the index of the last step that reads it (values not read: none).
    last_use: HashMap<ValueId, usize>,
    /// Values that two or more native steps with int8 or FP8 activations multiply (e.g. one
    /// layer's Q, K and V projections): prepared once per run and shared.
    shared_prepared: HashSet<ValueId>,
    /// The most bytes one tensor a kernel creates may take.
    budget: TensorBudget,
    /// Buffers of the last run's dead intermediates, reused by the next run's outputs
    /// (`alloc::Recycled`); a run that finds them taken by a concurrent one starts empty.
    recycled: std::sync::Mutex<alloc::Recycled>,
}

impl std::fmt::Debug for CpuExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuExecutor({} nodes)", self.steps.len())
    }
}

impl CpuExecutor {
    /// Prepares `graph` with the standard kernels. Fails on a cycle or an op with no kernel.
    /// Its tensor budget is the one `FPX_MAX_TENSOR_BYTES` sets (default 4 GiB per tensor;
    /// [`CpuExecutor::with_budget`] sets another); a malformed value is an error.
    pub fn new(graph: Graph) -> Result<Self, RuntimeError> {
        Self::with_kernels(graph, &KernelRegistry::standard())
    }

    /// Prepares `graph` with the kernels of `registry`.
    pub fn with_kernels(graph: Graph, registry: &KernelRegistry) -> Result<Self, RuntimeError> {
        Self::with_native(graph, registry, HashMap::new(), Vec::new())
    }

    /// Prepares `graph`; the QuantMatMul nodes named in `native` run their compiled kernels
    /// (kept alive by `libraries`), every other node its reference kernel. Constants kept in a
    /// file ([`fpx_ir::StoredTensor`]) are read into memory.
    pub fn with_native(
        graph: Graph,
        registry: &KernelRegistry,
        native: HashMap<String, NativeQmm>,
        libraries: Vec<Arc<NativeLibrary>>,
    ) -> Result<Self, RuntimeError> {
        let mut executor = Self::prepare(graph, registry, native, libraries)?;
        // Packed weights of a mapped artifact that only native kernels read stay where they
        // are: the kernels read them in place (no copy, so a large model opens at once).
        let g = &executor.graph;
        let native_nodes: HashSet<NodeId> =
            executor.steps.iter().filter(|(_, s)| matches!(s, Step::Native(..))).map(|(id, _)| *id).collect();
        let in_place: HashSet<ValueId> = g
            .value_ids()
            .filter(|&v| {
                let value = g.value(v);
                value.stored.as_ref().is_some_and(|s| s.mapped_bytes().is_some())
                    && !value.consumers.is_empty()
                    && !g.outputs.contains(&v)
                    && value
                        .consumers
                        .iter()
                        .all(|n| native_nodes.contains(n) && g.node(*n).inputs.iter().enumerate().all(|(k, i)| *i != Some(v) || k == 1))
            })
            .collect();
        executor.graph.load_stored_constants_except(&|v| in_place.contains(&v))?;
        Ok(executor)
    }

    /// Makes every check [`CpuExecutor::new`] makes (a kernel for every node, valid quantized
    /// products) without reading constants kept in a file: what `fpx compile` runs so that an
    /// artifact that could never run is refused, at no memory cost.
    pub fn check(graph: Graph) -> Result<(), RuntimeError> {
        Self::prepare(graph, &KernelRegistry::standard(), HashMap::new(), Vec::new()).map(drop)
    }

    fn prepare(
        graph: Graph,
        registry: &KernelRegistry,
        mut native: HashMap<String, NativeQmm>,
        libraries: Vec<Arc<NativeLibrary>>,
    ) -> Result<Self, RuntimeError> {
        let order = graph.topo_order()?;
        let mut steps = Vec::with_capacity(order.len());
        let mut last_use = HashMap::new();
        for (i, id) in order.into_iter().enumerate() {
            let node = graph.node(id);
            let k = registry.get(&node.domain, &node.op_type).ok_or_else(|| RuntimeError::NoKernel {
                node: node.name.clone(),
                op: node.op_type.clone(),
                domain: node.domain.clone(),
            })?;
            for v in node.inputs.iter().flatten() {
                last_use.insert(*v, i);
            }
            // A quantized product whose attributes are not a valid QuantGemm is refused now,
            // naming the node, whichever kernel would run it.
            let gemm = quant_matmul::is_quant_matmul(node).then(|| quant_matmul::read(node)).transpose()?;
            let step = match native.remove(&node.name) {
                Some(q) if gemm == Some(q.gemm) => {
                    let epilogue = quant_matmul::epilogue(node, &q.gemm)?;
                    let constants = NativeConstants::of(&graph, node, &q.gemm).map_err(|e| RuntimeError::Kernel {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        message: e.to_string(),
                    })?;
                    Step::Native(q, epilogue, Arc::new(constants))
                }
                Some(q) if gemm.is_some() => {
                    return Err(RuntimeError::Kernel {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        message: format!("the native kernel computes {}, but the node is {}", q.gemm, gemm.expect("checked")),
                    })
                }
                Some(_) => {
                    return Err(RuntimeError::Kernel {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        message: "a native kernel was given for a node that is not a QuantMatMul".into(),
                    })
                }
                None => Step::Kernel(k),
            };
            steps.push((id, step));
        }
        if let Some(name) = native.keys().next() {
            return Err(RuntimeError::Kernel {
                node: name.clone(),
                op: quant_matmul::OP_TYPE.into(),
                message: "a native kernel names a node the graph does not have".into(),
            });
        }
        let consume = steps
            .iter()
            .enumerate()
            .map(|(i, (id, step))| {
                let node = graph.node(*id);
                let kernel = match step {
                    Step::Kernel(_) => registry.get_owned(&node.domain, &node.op_type)?,
                    Step::Native(..) => return None,
                };
                let only = registry.owned_slot(&node.domain, &node.op_type);
                let slots: Vec<usize> = (0..node.inputs.len())
                    .filter(|&k| only.is_none_or(|s| s == k))
                    .filter(|&k| {
                        let Some(v) = node.inputs[k] else { return false };
                        last_use.get(&v) == Some(&i)
                            && !graph.outputs.contains(&v)
                            && !graph.is_constant(v)
                            && node.inputs.iter().filter(|u| **u == Some(v)).count() == 1
                    })
                    .collect();
                (!slots.is_empty()).then_some(Consume { kernel, slots })
            })
            .collect();
        let mut prepared_readers: HashMap<ValueId, usize> = HashMap::new();
        for (id, step) in &steps {
            if let (Step::Native(q, ..), Some(Some(x))) = (step, graph.node(*id).inputs.first()) {
                if q.prepares_activations() {
                    *prepared_readers.entry(*x).or_default() += 1;
                }
            }
        }
        let shared_prepared = prepared_readers.into_iter().filter(|&(_, n)| n > 1).map(|(v, _)| v).collect();
        let budget = TensorBudget::from_env()?;
        Ok(CpuExecutor { graph, steps, consume, _libraries: libraries, last_use, shared_prepared, budget, recycled: Default::default() })
    }

    /// The same executor with another tensor budget: every tensor a kernel creates is checked
    /// against it before it is allocated, and one over it is an error naming the node.
    pub fn with_budget(mut self, budget: TensorBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the tensor budget (see [`CpuExecutor::with_budget`]).
    pub fn set_budget(&mut self, budget: TensorBudget) {
        self.budget = budget;
    }

    /// The tensor budget kernels check their outputs against.
    pub fn budget(&self) -> TensorBudget {
        self.budget
    }

    /// The graph being run.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Names and declared types of the graph inputs, in order.
    pub fn input_specs(&self) -> Vec<(String, Option<TensorType>)> {
        self.graph.inputs.iter().map(|&v| (self.graph.value(v).name.clone(), self.graph.value(v).ty.clone())).collect()
    }

    /// Names of the graph outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.graph.outputs.iter().map(|&v| self.graph.value(v).name.clone()).collect()
    }

    /// Checks caller inputs against the declared inputs: every input given once, nothing
    /// extra, element types equal, ranks equal, fixed dims equal, symbolic dims consistent.
    fn bind_inputs(&self, inputs: Vec<(String, Tensor)>) -> Result<HashMap<ValueId, Arc<Tensor>>, RuntimeError> {
        let expected = || {
            if self.graph.inputs.is_empty() {
                return "the model takes no inputs".to_string();
            }
            let names = self.graph.inputs.iter().map(|v| format!("'{}'", self.graph.value(*v).name)).collect::<Vec<_>>();
            format!("the model's inputs are {}", names.join(", "))
        };
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            if given.contains_key(&name) {
                return Err(RuntimeError::Input { name, message: "given more than once".into() });
            }
            if !self.graph.inputs.iter().any(|v| self.graph.value(*v).name == name) {
                // An initializer the model also lists as a graph input (ONNX allows it) is a
                // constant here: fpx does not let the caller replace it.
                let what = match self.graph.find_value(&name) {
                    Some(id) if self.graph.constant(id).is_some() => {
                        "is a constant of the model (an initializer, also listed as a graph input), which cannot be fed"
                    }
                    // A constant folded into the model, or a node's output.
                    Some(_) => "is not an input the caller can feed: it is a constant of the model (an initializer listed as a graph input is one) or a value computed inside it",
                    None => "the model has no such input",
                };
                return Err(RuntimeError::Input { message: format!("{what}; {}", expected()), name });
            }
            given.insert(name, t);
        }
        let mut bound = HashMap::new();
        let mut syms: HashMap<String, (usize, String)> = HashMap::new();
        for &v in &self.graph.inputs {
            let val = self.graph.value(v);
            let name = &val.name;
            let t = given
                .remove(name)
                .ok_or_else(|| RuntimeError::Input { name: name.clone(), message: format!("missing ({})", expected()) })?;
            if let Some(ty) = &val.ty {
                let err = |message: String| RuntimeError::Input { name: name.clone(), message };
                if t.dtype() != ty.dtype {
                    return Err(err(format!("expected element type {}, got {}", ty.dtype, t.dtype())));
                }
                if let Some(dims) = &ty.shape {
                    if dims.len() != t.rank() {
                        return Err(err(format!("expected {ty} (rank {}), got shape {:?} (rank {})", dims.len(), t.shape(), t.rank())));
                    }
                    for (i, (d, &n)) in dims.iter().zip(t.shape()).enumerate() {
                        match d {
                            Dim::Fixed(f) if *f != n => {
                                return Err(err(format!("expected {ty}, got shape {:?}: dimension {i} must be {f}", t.shape())))
                            }
                            Dim::Sym(s) => match syms.get(s) {
                                Some((m, other)) if *m != n => {
                                    return Err(err(format!("dimension {i} ('{s}') is {n}, but input '{other}' set '{s}' to {m}")));
                                }
                                None => {
                                    syms.insert(s.clone(), (n, name.clone()));
                                }
                                _ => {}
                            },
                            _ => {}
                        }
                    }
                }
            }
            bound.insert(v, Arc::new(t));
        }
        Ok(bound)
    }

    /// Runs the graph on named inputs; returns the outputs, named, in graph order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.run_profiled(inputs, None)
    }

    /// Like [`CpuExecutor::run`], and records each node's wall time into `profile` when given.
    pub fn run_profiled(
        &self,
        inputs: Vec<(String, Tensor)>,
        profile: Option<&mut Vec<NodeTiming>>,
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let pool = self.recycled.try_lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        let (result, pool) = alloc::with_recycling(pool, || self.run_steps(inputs, profile));
        if let Ok(mut kept) = self.recycled.try_lock() {
            *kept = pool;
        }
        result
    }

    /// The body of [`CpuExecutor::run_profiled`], inside its recycling scope.
    fn run_steps(
        &self,
        inputs: Vec<(String, Tensor)>,
        mut profile: Option<&mut Vec<NodeTiming>>,
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let mut live = self.bind_inputs(inputs)?;
        let mut prepared: PreparedCache = HashMap::new();
        let keep: Vec<ValueId> = self.graph.outputs.clone();
        for (i, (id, step)) in self.steps.iter().enumerate() {
            let node = self.graph.node(*id);
            let started = profile.is_some().then(std::time::Instant::now);
            // Take by value the largest input no later node reads, when the kernel can use it.
            let mut owned: Option<(usize, Tensor, OwnedKernelFn)> = None;
            if let Some(c) = &self.consume[i] {
                let pick = c
                    .slots
                    .iter()
                    .filter_map(|&k| node.inputs[k].and_then(|v| live.get(&v).map(|t| (k, v, t.len()))))
                    .max_by_key(|&(k, _, len)| (len, std::cmp::Reverse(k)));
                if let Some((k, v, _)) = pick {
                    let t = live.remove(&v).expect("just found");
                    match Arc::try_unwrap(t) {
                        Ok(t) => owned = Some((k, t, c.kernel)),
                        Err(t) => {
                            live.insert(v, t);
                        }
                    }
                }
            }
            let outs = {
                let args: Vec<Option<&Tensor>> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        if owned.as_ref().is_some_and(|(slot, _, _)| *slot == k) {
                            return None;
                        }
                        // A packed weight read in place (a native step's input 1) is no tensor.
                        v.filter(|&v| self.graph.stored(v).is_none()).map(|v| {
                            self.graph.constant(v).or_else(|| live.get(&v)).map(|t| &**t).expect("topological order defines inputs first")
                        })
                    })
                    .collect();
                let result = alloc::with_budget(self.budget, || match (step, owned) {
                    (Step::Kernel(_), Some((slot, t, by_value))) => by_value(node, &args, slot, t),
                    (Step::Kernel(kernel), None) => kernel(node, &args),
                    (Step::Native(q, epilogue, constants), _) => {
                        let shared = node.inputs.first().copied().flatten().filter(|x| self.shared_prepared.contains(x));
                        let in_place =
                            node.inputs.get(1).copied().flatten().and_then(|v| self.graph.stored(v)).and_then(|s| s.mapped_bytes());
                        run_native(q, epilogue, constants, &args, in_place, shared.map(|x| (x, &mut prepared)))
                    }
                });
                result.map_err(|e| RuntimeError::Kernel { node: node.name.clone(), op: node.op_type.clone(), message: e.0 })?
            };
            if let (Some(p), Some(t)) = (profile.as_deref_mut(), started) {
                p.push(NodeTiming {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    native: matches!(step, Step::Native(..)),
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
            if outs.len() < node.outputs.len() {
                return Err(RuntimeError::Kernel {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    message: format!("kernel returned {} outputs, expected {}", outs.len(), node.outputs.len()),
                });
            }
            for (v, t) in node.outputs.iter().zip(outs) {
                live.insert(*v, Arc::new(t));
            }
            for v in node.inputs.iter().flatten() {
                if self.last_use.get(v) == Some(&i) {
                    prepared.retain(|(x, _), _| x != v);
                    if !keep.contains(v) {
                        // Its buffer serves a later output when no one else holds it.
                        if let Some(Ok(t)) = live.remove(v).map(Arc::try_unwrap) {
                            alloc::recycle(t);
                        }
                    }
                }
            }
        }
        // Outputs move out of the live set (cloned only when named twice or constant).
        let outputs = &self.graph.outputs;
        outputs
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let val = self.graph.value(v);
                let missing = || RuntimeError::Kernel {
                    node: "<graph output>".into(),
                    op: String::new(),
                    message: format!("output '{}' was not computed", val.name),
                };
                let t = match &val.constant {
                    Some(c) => Tensor::clone(c),
                    None if outputs[k + 1..].contains(&v) => Tensor::clone(live.get(&v).ok_or_else(missing)?),
                    None => {
                        let t = live.remove(&v).ok_or_else(missing)?;
                        Arc::try_unwrap(t).unwrap_or_else(|t| Tensor::clone(&t))
                    }
                };
                Ok((val.name.clone(), t))
            })
            .collect()
    }
}

/// Prepared activations (int8 or FP8) of shared values ([`CpuExecutor`]'s `shared_prepared`)
/// during one run, by value and activations.
type PreparedCache = HashMap<(ValueId, fpx_quant::Activations), Option<PreparedActivations>>;

/// Runs a QuantMatMul node through its compiled kernel and fused epilogue. With `shared`, its X
/// is a value other int8 or FP8 steps also read: its prepared form comes from (or goes into) the
/// cache.
fn run_native(
    q: &NativeQmm,
    epilogue: &Epilogue,
    constants: &NativeConstants,
    args: &[Option<&Tensor>],
    in_place: Option<&[u8]>,
    shared: Option<(ValueId, &mut PreparedCache)>,
) -> Result<Vec<Tensor>, KernelError> {
    let get = |i: usize| args.get(i).copied().flatten().ok_or_else(|| KernelError::new(format!("input {i} is required")));
    let (x, scales) = (get(0)?, get(2)?);
    let (k, n) = (q.gemm.k, q.gemm.n);
    if x.shape().last() != Some(&k) {
        return Err(KernelError::new(format!("X has shape {:?}, but the weight has K = {k}", x.shape())));
    }
    // The packed weight: in place in a mapped artifact, or a tensor.
    let packed_tensor;
    let p: &[u8] = match in_place {
        Some(bytes) => bytes,
        None => match get(1)? {
            Tensor::U8(a) => {
                packed_tensor = a.as_standard_layout();
                packed_tensor.as_slice().expect("standard")
            }
            _ => return Err(KernelError::new("packed must be uint8")),
        },
    };
    let Tensor::F32(s) = scales else { return Err(KernelError::new("scales must be float")) };
    // Borrow X when it already is contiguous f32 (the common case); convert otherwise.
    let converted: Vec<f32>;
    let xv: &[f32] = match x {
        Tensor::F32(a) if a.is_standard_layout() => a.as_slice().expect("standard"),
        other => {
            converted = other.to_f32().iter().copied().collect();
            &converted
        }
    };
    let m = xv.len() / k.max(1);
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = epilogue.output_columns(n);
    // The output (N comes from the node), checked against the budget before it is allocated;
    // the kernels and epilogues write every element.
    let mut y = alloc::overwritten_f32(&shape)?;
    let residual_converted: Vec<f32>;
    let residual_arg = args.get(quant_matmul::RESIDUAL_INPUT).copied().flatten();
    // A residual of another shape than Y is added afterwards, with broadcasting.
    let broadcast = residual_arg.filter(|r| r.shape() != shape.as_slice());
    let epilogue = &Epilogue { residual: epilogue.residual && broadcast.is_none(), ..*epilogue };
    let residual: Option<&[f32]> = match residual_arg.filter(|_| broadcast.is_none()) {
        None => None,
        Some(Tensor::F32(a)) if a.is_standard_layout() => Some(a.as_slice().expect("standard")),
        Some(other) => {
            residual_converted = other.to_f32().iter().copied().collect();
            Some(&residual_converted)
        }
    };
    // Constant bias and LoRC factors were converted when the executor was built.
    let bias_converted: Option<Vec<f32>>;
    let bias = match &constants.bias {
        Some(b) => Some(b.as_slice()),
        None => {
            bias_converted = args.get(3).copied().flatten().map(|b| b.to_f32().iter().copied().collect());
            bias_converted.as_deref()
        }
    };
    let s = s.as_standard_layout();
    // LoRC: T = X · U now; each thread adds T · V to its block of columns in the epilogue.
    let computed_factors;
    let factors = match &constants.lorc {
        Some(f) => Some(f),
        None => {
            computed_factors = crate::kernels::quant::LorcFactors::from_inputs(
                crate::kernels::quant::LorcInputs {
                    u: args.get(quant_matmul::LORC_U_INPUT).copied().flatten(),
                    v: args.get(quant_matmul::LORC_V_INPUT).copied().flatten(),
                    scales: args.get(quant_matmul::LORC_SCALES_INPUT).copied().flatten(),
                    storage: constants.lorc_storage,
                },
                k,
                n,
            )?;
            computed_factors.as_ref()
        }
    };
    let correction = factors.map(|f| f.project(xv, m)).transpose()?;
    let activations = q.gemm.activations;
    let prepared =
        shared.and_then(|(v, cache)| cache.entry((v, activations)).or_insert_with(|| prepare_activations(activations, xv, m, k)).as_ref());
    q.run(xv, prepared, m, p, s.as_slice().expect("standard"), bias, correction.as_ref(), epilogue, residual, &mut y)?;
    let mut out = Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&shape), y).expect("shape matches"));
    if let Some(r) = broadcast {
        out = crate::kernels::quant::broadcast_residual(out, r)?;
    }
    Ok(vec![if x.dtype() == fpx_ir::DType::F32 { out } else { out.cast(x.dtype()) }])
}

/// Evaluates single nodes with the CPU kernels: the [`NodeEvaluator`] that constant folding uses.
/// Its kernels check every tensor they create against its budget (default: 4 GiB per tensor).
pub struct CpuEvaluator {
    kernels: KernelRegistry,
    budget: TensorBudget,
}

impl Default for CpuEvaluator {
    fn default() -> Self {
        CpuEvaluator::with_budget(TensorBudget::default())
    }
}

impl CpuEvaluator {
    /// The standard kernels under `budget`.
    pub fn with_budget(budget: TensorBudget) -> Self {
        CpuEvaluator { kernels: KernelRegistry::standard(), budget }
    }
}

impl NodeEvaluator for CpuEvaluator {
    fn evaluate(&self, node: &Node, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, String> {
        let k = self.kernels.get(&node.domain, &node.op_type).ok_or_else(|| format!("no CPU kernel for {}", node.op_type))?;
        alloc::with_budget(self.budget, || k(node, inputs)).map_err(|KernelError(m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_ir::ndarray::{ArrayD, IxDyn};
    use fpx_ir::{DType, Node, TensorType};

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    /// Inputs taken by value (reshaped without a copy, overwritten in place) give the same
    /// outputs as the by-reference kernels, and never a value that is still needed: one read
    /// twice by a node, one read again later, a graph output read later, an output named twice.
    #[test]
    fn taking_inputs_by_value_changes_no_result() {
        let mut g = Graph::new("own");
        g.opsets.insert(String::new(), 17);
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3, 4])).unwrap();
        let c = g.add_constant("c", t(&[4], vec![0.5, -1.0, 2.0, 0.25])).unwrap();
        let shape = g.add_constant("shape", Tensor::vec_i64(vec![6, 4])).unwrap();
        let add = |g: &mut Graph, op: &str, ins: &[ValueId], out: &str| {
            let o = g.value_named(out);
            g.add_node(Node::new(out, op, 17, ins.iter().map(|&v| Some(v)).collect(), vec![o])).unwrap();
            o
        };
        let a = add(&mut g, "Add", &[x, c], "a"); // x is read again below
        let b = add(&mut g, "Mul", &[a, a], "b"); // the same value twice
        let r = add(&mut g, "Reshape", &[b, shape], "r"); // b dies: reshaped in place
        let e = add(&mut g, "Erf", &[r], "e"); // r dies: in place; e is a graph output read later
        let x2 = add(&mut g, "Reshape", &[x, shape], "x2"); // the graph input dies here
        let s = add(&mut g, "Sub", &[x2, e], "s"); // x2 dies, e does not
        let sm = add(&mut g, "Softmax", &[s], "sm");
        g.outputs.extend([e, sm, sm, a]);
        let xv: Vec<f32> = (0..24).map(|k| (k as f32 - 11.0) / 7.0).collect();
        let run = |reg: &KernelRegistry| {
            let ex = CpuExecutor::with_kernels(g.clone(), reg).unwrap();
            ex.run(vec![("x".into(), t(&[2, 3, 4], xv.clone()))]).unwrap()
        };
        let (fast, plain) = (run(&KernelRegistry::standard()), run(&KernelRegistry::standard().without_owned()));
        assert_eq!(fast.len(), 4);
        for ((n1, a), (n2, b)) in fast.iter().zip(&plain) {
            assert_eq!(n1, n2);
            assert_eq!(a.shape(), b.shape());
            assert_eq!(a.to_f64_vec(), b.to_f64_vec(), "output {n1}");
        }
        // Spot-check values: a = x + c, e = erf(a²).
        let a0 = xv[0] as f64 + 0.5;
        assert!((fast[0].1.to_f64_vec()[0] - libm::erf(a0 * a0)).abs() < 1e-6);
        assert!((fast[3].1.to_f64_vec()[0] - a0).abs() < 1e-6);
    }

    /// A constant (an initializer the model also listed as a graph input) cannot be fed, and the
    /// message says so and lists the real inputs, or that there are none.
    #[test]
    fn constants_cannot_be_fed_and_the_message_lists_the_real_inputs() {
        let mut g = Graph::new("consts");
        g.opsets.insert(String::new(), 17);
        let w = g.add_constant("w", t(&[2], vec![1.0, 2.0])).unwrap();
        let y = g.value_named("y");
        g.add_node(Node::new("neg", "Neg", 17, vec![Some(w)], vec![y])).unwrap();
        g.outputs.push(y);
        let ex = CpuExecutor::new(g.clone()).unwrap();
        let e = ex.run(vec![("w".into(), t(&[2], vec![0.0; 2]))]).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("is a constant") && e.contains("the model takes no inputs"), "{e}");
        let e = ex.run(vec![("v".into(), t(&[2], vec![0.0; 2]))]).unwrap_err().to_string();
        assert!(e.contains("no such input") && e.contains("takes no inputs"), "{e}");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2])).unwrap();
        let z = g.value_named("z");
        g.add_node(Node::new("add", "Add", 17, vec![Some(x), Some(y)], vec![z])).unwrap();
        let ex = CpuExecutor::new(g).unwrap();
        let e = ex.run(vec![("x".into(), t(&[2], vec![0.0; 2])), ("w".into(), t(&[2], vec![0.0; 2]))]).unwrap_err().to_string();
        assert!(e.contains("is a constant") && e.contains("the model's inputs are 'x'"), "{e}");
    }

    /// Integer division by zero is an error naming the node (onnxruntime refuses it too); float
    /// division by zero is IEEE (inf).
    #[test]
    fn integer_division_by_zero_names_the_node() {
        let mut g = Graph::new("div");
        g.opsets.insert(String::new(), 17);
        let x = g.add_input("x", TensorType::fixed(DType::I32, &[3])).unwrap();
        let d = g.add_input("d", TensorType::fixed(DType::I32, &[3])).unwrap();
        let y = g.value_named("y");
        g.add_node(Node::new("int_div", "Div", 17, vec![Some(x), Some(d)], vec![y])).unwrap();
        g.outputs.push(y);
        let ex = CpuExecutor::new(g).unwrap();
        let i32s = |v: Vec<i32>| Tensor::from(ArrayD::from_shape_vec(IxDyn(&[3]), v).unwrap());
        let e = ex.run(vec![("x".into(), i32s(vec![1, 2, 3])), ("d".into(), i32s(vec![1, 0, 1]))]).unwrap_err().to_string();
        assert!(e.contains("int_div") && e.contains("division by zero"), "{e}");
        let out = ex.run(vec![("x".into(), i32s(vec![7, -7, 3])), ("d".into(), i32s(vec![2, 2, -1]))]).unwrap();
        assert_eq!(out[0].1.to_f64_vec(), vec![3.0, -3.0, -3.0]);
    }
}
