//! Errors of the IR: each names the node, op or value at fault.

use thiserror::Error;

/// Something wrong with a graph or one of its nodes.
#[derive(Debug, Error)]
pub enum IrError {
    /// A constant kept in a file could not be read.
    #[error("constant '{value}': {message}")]
    ConstantData {
        /// The constant's name.
        value: String,
        /// What went wrong, naming the file and offset.
        message: String,
    },
    /// No schema is registered for this op in this domain.
    #[error("node '{node}': unsupported op '{op}' (domain '{domain}', opset {opset})")]
    UnknownOp {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// The op's domain (`""` = ONNX).
        domain: String,
        /// The opset version the model imports for the domain.
        opset: i64,
    },
    /// The op exists, but not at the model's opset version.
    #[error("node '{node}': op '{op}' (domain '{domain}') is supported for opsets {min}..={max}, but the model imports opset {opset}")]
    UnsupportedOpset {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// The op's domain (`""` = ONNX).
        domain: String,
        /// The opset version the model imports for the domain.
        opset: i64,
        /// The first supported opset.
        min: i64,
        /// The last supported opset.
        max: i64,
    },
    /// An attribute is missing, unexpected or of the wrong kind.
    #[error("node '{node}' ({op}, opset {opset}): {message}")]
    BadAttribute {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// The opset version the model imports for the domain.
        opset: i64,
        /// What is wrong.
        message: String,
    },
    /// The node has too few or too many inputs or outputs.
    #[error("node '{node}' ({op}): {message}")]
    BadArity {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// Two nodes (or a node and a graph input/initializer) define the same value.
    #[error("value '{value}' is defined more than once (again by node '{node}')")]
    MultipleProducers {
        /// The value's name.
        value: String,
        /// The node's name.
        node: String,
    },
    /// A value is used but nothing defines it.
    #[error("node '{node}' uses value '{value}', which no node, graph input or initializer defines")]
    Undefined {
        /// The value's name.
        value: String,
        /// The node's name.
        node: String,
    },
    /// The graph has a cycle through this node.
    #[error("the graph has a cycle through node '{node}' ({op})")]
    Cycle {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
    },
    /// Inferred and declared types disagree, or inputs have types the op rejects.
    #[error("node '{node}' ({op}): {message}")]
    TypeMismatch {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else wrong with the graph's structure.
    #[error("invalid graph: {0}")]
    Invalid(String),
}

/// Result with [`IrError`].
pub type Result<T, E = IrError> = std::result::Result<T, E>;
