//! fpx-quant: the numbers behind fpx's weight quantization.
//!
//! Pure Rust, no I/O, no graph knowledge. It owns
//! - [`Format`]: the weight formats (FP6 e3m2/e2m3, FP5 e2m2, FP4 e2m1, FP8 e4m3/e5m2,
//!   INT4/INT8), exact decoding and round-to-nearest-even, saturating encoding;
//! - [`channel_major`]: weights (f32, FP16, BF16) transposed to the channel-major f32 the
//!   quantizer reads, block by block (8 × 8 tiles in AVX2 + F16C registers);
//! - [`scale`]: per-channel (or per-group) scales, absmax or MSE-searched, and [`quantize`];
//!   [`quantize_values`] takes a weight as stored (FP16/BF16 bytes, either layout) and
//!   converts it in cache-sized blocks of channels;
//! - [`bias_shift`]: FP→FP16/BF16 conversion with shifts and masks only, the constant factor
//!   being folded into the scales;
//! - [`fold`]: what kernels store per code and the factor folded into the stored scales;
//! - [`gemm`]: [`QuantGemm`], the one typed contract of a quantized product, and
//!   [`KernelTable`], which kernel serves which M;
//! - [`Activations`]: what quantized products multiply (f32, int8, FP8 e4m3/e5m2);
//! - [`act8`]: int8 activations (per row and block of 32) for the byte dot-product kernels;
//! - [`act_fp8`]: FP8 activations (per row, power-of-two scales), ZeroQuant-FP's W4A8;
//! - [`lorc`]: low-rank compensation (truncated SVD of the quantization error, LoRC), its
//!   factors stored as FP16 or as float-format codes;
//! - [`dense`]: dense bit packing of small code tensors (the quantized LoRC factors);
//! - [`layout`]: the "4+2" bit-plane layout in tensor-core fragment order, with its inverse,
//!   the one definition shared by the CPU kernels, the GPU kernels and the tests.
// No unsafe code but the CPU-feature dispatch in `encode` (an AVX2 copy of a safe loop) and the
// AVX2 + F16C transpose tiles in `channel_major::x86` (bounds asserted before they run).
#![deny(unsafe_code)]

pub mod act8;
pub mod act_fp8;
pub mod activations;
pub mod bias_shift;
pub mod channel_major;
pub mod dense;
pub mod encode;
mod error;
pub mod fold;
pub mod format;
pub mod gemm;
pub mod layout;
pub mod lorc;
pub mod scale;
mod scale_choice;
pub mod seeded;

pub use activations::Activations;
pub use channel_major::WeightValues;
pub use error::QuantError;
pub use format::Format;
pub use gemm::{takes_int8_activations, GemmError, KernelTable, QuantGemm};
pub use scale::{quantize, quantize_channels, quantize_values, quantize_values_packed, QuantConfig, QuantizedMatrix, WeightLayout};
