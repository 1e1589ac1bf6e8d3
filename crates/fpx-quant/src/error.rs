//! Errors of quantization: each names the tensor so a user can find the bad weight.

/// Why a weight matrix could not be quantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A weight is NaN or infinite: no scale can represent it, so quantization refuses
    /// rather than silently producing garbage. `row`/`col` index the `[k][n]` weight.
    #[error("tensor '{tensor}': weight [{row}, {col}] is {value}; quantization needs finite weights")]
    NonFinite {
        /// Name of the weight tensor.
        tensor: String,
        /// Row (reduction index `k`) of the offending weight.
        row: usize,
        /// Column (output channel `n`) of the offending weight.
        col: usize,
        /// The offending value (NaN or ±inf).
        value: f32,
    },
    /// The group size is 0. Any group size >= 1 is accepted; when it does not divide `k`
    /// the last group is shorter.
    #[error(
        "tensor '{tensor}': group size {group} is invalid for K = {k}: it must be at least 1 \
         (a last group shorter than the others is allowed)"
    )]
    BadGroupSize {
        /// Name of the weight tensor.
        tensor: String,
        /// The rejected group size.
        group: usize,
        /// The reduction dimension of the weight.
        k: usize,
    },
    /// The weight's data does not match the stated shape (or a dimension is empty).
    #[error("tensor '{tensor}': {message}")]
    Shape {
        /// Name of the weight tensor.
        tensor: String,
        /// What is wrong with the shape.
        message: String,
    },
}
