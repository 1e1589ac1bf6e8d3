//! Graph rewrites of fpx. The main one, [`quantize_weights`], replaces every MatMul/Gemm whose
//! weight is a constant by an `fpx:QuantMatMul` node holding the weight in the 4+2 bit-plane
//! layout with per-channel (or per-group) scales into which the format's bias-shift factor is
//! folded, so the kernels dequantize with shifts and masks and scale once per output.

mod embedding;
#[cfg(test)]
mod embedding_tests;
mod epilogue;
#[cfg(test)]
mod epilogue_tests;
mod fuse;
mod fuse_attention;
#[cfg(test)]
mod fuse_attention_tests;
mod fuse_norm;
#[cfg(test)]
mod fuse_norm_tests;
mod fuse_rope;
#[cfg(test)]
mod fuse_rope_tests;
mod kv_cache;
mod quantize;
mod scheme;
mod shape_fold;
#[cfg(test)]
mod shape_fold_tests;
#[cfg(test)]
mod tests;
mod upcast;
#[cfg(test)]
mod upcast_tests;
mod weight_fetch;

pub use embedding::{EmbeddingQuant, MIN_TABLE_ELEMENTS};
pub use epilogue::{fuse_epilogues, FuseEpilogues};
pub use fuse::FuseGelu;
pub use fuse_attention::FuseAttention;
pub use fuse_norm::FuseRmsNorm;
pub use fuse_rope::FuseRotateHalf;
pub use kv_cache::AppendKvCache;
pub use quantize::{quantize_weights, quantize_weights_with_progress, weight_sites, LayerQuant, QuantSummary, QuantizeWeights, WeightSite};
pub use scheme::{QuantizeOptions, WeightScheme, SCHEME_NAMES};
pub use shape_fold::FoldKnownShapes;
pub use upcast::{upcast_half_precision, UpcastHalfPrecision};

use thiserror::Error;

/// Why a rewrite failed.
#[derive(Debug, Error)]
pub enum PassError {
    /// A weight could not be quantized (names the tensor).
    #[error(transparent)]
    Quant(#[from] fpx_quant::QuantError),
    /// The graph is invalid.
    #[error(transparent)]
    Ir(#[from] fpx_ir::IrError),
    /// An option is invalid (unknown scheme, zero group size).
    #[error("{0}")]
    Option(String),
    /// A rewritten product would not be one fpx can run.
    #[error("node '{node}': {source}")]
    Gemm {
        /// The MatMul/Gemm node.
        node: String,
        /// What is wrong with its quantized product.
        #[source]
        source: fpx_quant::GemmError,
    },
}
