//! fpx's intermediate representation.
//!
//! A [`Graph`] holds ops ([`Node`]) in a `petgraph` `StableDiGraph`; tensors flow between
//! them as named [`Value`]s with static [`TensorType`]s (dims may be symbolic). Op schemas
//! (opset range, arity, attributes, shape inference) are registered in an
//! [`ops::OpRegistry`]; [`verify`] checks a graph, and [`pass`] holds the pass manager.
//! [`file`] opens input files safely (regular files only, read to their known size).
//! [`shape`] is the concrete shape math (broadcasting, strides) the CPU and GPU kernels share.

mod attr;
pub mod budget;
mod dtype;
mod error;
pub mod file;
mod graph;
pub mod le_bytes;
pub mod ops;
pub mod pass;
pub mod shape;
pub mod stored;
mod tensor;
mod types;
pub mod verify;

pub use attr::{AttrKind, Attribute};
pub use budget::{BudgetError, TensorBudget};
pub use dtype::{onnx_code, onnx_dtype, DType};
pub use error::{IrError, Result};
pub use graph::{Graph, Node, NodeId, Spiller, Value, ValueId};
pub use ops::canonical_domain;
pub use stored::StoredTensor;
pub use tensor::{Elem, Tensor};
pub use types::{Dim, TensorType, MAX_INFERRED_RANK};

pub use half;
pub use ndarray;
