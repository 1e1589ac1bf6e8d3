//! The decoder signature: which graph inputs and outputs carry the tokens, the mask, the
//! positions, the logits and the KV cache, found by name as optimum and `torch.onnx.export` name
//! them (`input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key` →
//! `present.N.key`, `logits`), with [`SignatureNames`] to name them where a model differs.

use fpx_ir::{DType, Dim, Graph, TensorType};
use thiserror::Error;

/// Why a graph is not a decoder [`crate::Generator`] can drive.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A required input or output is missing.
    #[error("the model has no {what} named '{name}' (its {kind}s are: {available}); name it with {flag}")]
    Missing {
        /// What it is for ("token input", "logits output").
        what: &'static str,
        /// The name looked for.
        name: String,
        /// "input" or "output".
        kind: &'static str,
        /// The names the graph has.
        available: String,
        /// The CLI flag that names it.
        flag: &'static str,
    },
    /// A cache input has no matching output.
    #[error("cache input '{input}' has no matching output '{output}' (cache outputs are found by replacing the prefix '{past}' with '{present}'; see --past-prefix/--present-prefix)")]
    UnpairedCache {
        /// The cache input.
        input: String,
        /// The output looked for.
        output: String,
        /// The input prefix.
        past: String,
        /// The output prefix.
        present: String,
    },
    /// A cache input's declared shape does not say where the sequence axis is or how big the
    /// other axes are.
    #[error("cache input '{input}' has type {ty}: {why}")]
    CacheShape {
        /// The cache input.
        input: String,
        /// Its declared type.
        ty: String,
        /// What is missing.
        why: String,
    },
    /// An input the generator does not know how to fill.
    #[error("the model has an input '{0}' that is not the tokens, the mask, the positions or a cache input; a decoder exported for generation has no others")]
    UnknownInput(String),
}

/// The names that identify a decoder's inputs and outputs (defaults: optimum's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureNames {
    /// Token ids in (`input_ids`).
    pub input_ids: String,
    /// The attention mask in, if the graph has it (`attention_mask`).
    pub attention_mask: String,
    /// Positions in, if the graph has it (`position_ids`).
    pub position_ids: String,
    /// Logits out (`logits`).
    pub logits: String,
    /// Prefix of cache inputs (`past_key_values.`).
    pub past_prefix: String,
    /// Prefix of cache outputs (`present.`): `past_prefix + rest` pairs with `present_prefix + rest`.
    pub present_prefix: String,
}

impl Default for SignatureNames {
    fn default() -> Self {
        SignatureNames {
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            position_ids: "position_ids".into(),
            logits: "logits".into(),
            past_prefix: "past_key_values.".into(),
            present_prefix: "present.".into(),
        }
    }
}

/// One cache tensor: read as `past`, written back as `present`, grown along `seq_axis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSlot {
    /// The graph input (`past_key_values.0.key`).
    pub past: String,
    /// The graph output (`present.0.key`).
    pub present: String,
    /// Its element type.
    pub dtype: DType,
    /// The declared dimensions (batch first; the sequence axis symbolic).
    pub dims: Vec<Dim>,
    /// The axis that grows by one per token.
    pub seq_axis: usize,
}

/// A decoder graph's signature as the generation loop uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderSignature {
    /// Token ids in, and their element type (int64 or int32).
    pub input_ids: (String, DType),
    /// The attention mask in, if any, with its element type.
    pub attention_mask: Option<(String, DType)>,
    /// The positions in, if any, with their element type.
    pub position_ids: Option<(String, DType)>,
    /// Logits out.
    pub logits: String,
    /// The cache, in the graph's input order.
    pub cache: Vec<CacheSlot>,
}

impl DecoderSignature {
    /// Finds the signature of `graph` by `names`.
    pub fn find(graph: &Graph, names: &SignatureNames) -> Result<DecoderSignature, SignatureError> {
        let inputs: Vec<(String, Option<TensorType>)> =
            graph.inputs.iter().map(|&v| (graph.value(v).name.clone(), graph.value(v).ty.clone())).collect();
        let outputs: Vec<String> = graph.outputs.iter().map(|&v| graph.value(v).name.clone()).collect();
        let input_names = || inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        let input =
            |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(n, t)| (n.clone(), t.as_ref().map_or(DType::I64, |t| t.dtype)));
        let input_ids = input(&names.input_ids).ok_or_else(|| SignatureError::Missing {
            what: "token input",
            name: names.input_ids.clone(),
            kind: "input",
            available: input_names(),
            flag: "--input-ids-name",
        })?;
        if !outputs.contains(&names.logits) {
            return Err(SignatureError::Missing {
                what: "logits output",
                name: names.logits.clone(),
                kind: "output",
                available: outputs.join(", "),
                flag: "--logits-name",
            });
        }
        let mut cache = Vec::new();
        for (name, ty) in &inputs {
            let Some(rest) = name.strip_prefix(names.past_prefix.as_str()) else {
                if ![&names.input_ids, &names.attention_mask, &names.position_ids].contains(&name) {
                    return Err(SignatureError::UnknownInput(name.clone()));
                }
                continue;
            };
            let present = format!("{}{rest}", names.present_prefix);
            if !outputs.contains(&present) {
                return Err(SignatureError::UnpairedCache {
                    input: name.clone(),
                    output: present,
                    past: names.past_prefix.clone(),
                    present: names.present_prefix.clone(),
                });
            }
            cache.push(cache_slot(name, present, ty.as_ref())?);
        }
        Ok(DecoderSignature {
            input_ids,
            attention_mask: input(&names.attention_mask),
            position_ids: input(&names.position_ids),
            logits: names.logits.clone(),
            cache,
        })
    }
}

/// A cache slot from the declared type: rank ≥ 2, batch first, exactly one other axis not fixed
/// (the sequence), every other axis fixed (heads, head size).
fn cache_slot(past: &str, present: String, ty: Option<&TensorType>) -> Result<CacheSlot, SignatureError> {
    let error = |why: &str| SignatureError::CacheShape {
        input: past.to_string(),
        ty: ty.map_or_else(|| "unknown".to_string(), |t| t.to_string()),
        why: why.to_string(),
    };
    let ty = ty.ok_or_else(|| error("its type is not declared"))?;
    let dims = ty.shape.clone().ok_or_else(|| error("its rank is not declared"))?;
    if dims.len() < 2 {
        return Err(error("a cache tensor has a batch axis and a sequence axis at least"));
    }
    let open: Vec<usize> = (1..dims.len()).filter(|&i| dims[i].fixed().is_none()).collect();
    let seq_axis = match open.as_slice() {
        [axis] => *axis,
        [] => return Err(error("no axis after the batch axis is dynamic, so none can grow")),
        _ => return Err(error("more than one axis after the batch axis is dynamic; the sequence axis is ambiguous")),
    };
    if !ty.dtype.is_float() {
        return Err(error("a cache holds floating-point keys or values"));
    }
    Ok(CacheSlot { past: past.to_string(), present, dtype: ty.dtype, dims, seq_axis })
}
