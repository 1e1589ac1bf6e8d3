//! `fpx:QuantMatMul` by the reference path: unpack the 4+2 planes, rebuild each weight from
//! its bias-shifted FP16 value and the folded scale, then multiply in f32 (with int8
//! activations, X quantized and dequantized first). The fast kernels
//! (LLVM, CUDA) are checked against this.

use super::matmul::sgemm_rows;
use super::{alloc, arg, array, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ops::{quant_matmul, FPX_DOMAIN};
use fpx_ir::{DType, Node, Tensor};
use fpx_quant::act8::Activations;
use fpx_quant::layout;
use fpx_quant::{fold, QuantGemm};

type Res = Result<Vec<Tensor>, KernelError>;

/// The dequantized weight `[k][n]` of the product `gemm`: `v(code) * scales[group][n]`.
pub fn dequantize(gemm: &QuantGemm, packed: &[u8], scales: &[f32]) -> Result<Vec<f32>, KernelError> {
    let QuantGemm { format, k, n, group_size: group, .. } = *gemm;
    let shape = gemm.packed_shape();
    if packed.len() != shape.total_bytes() {
        kbail!("packed weight has {} bytes, but {} [{k} x {n}] needs {}", packed.len(), format.name(), shape.total_bytes());
    }
    let groups = gemm.groups();
    if scales.len() != groups * n {
        kbail!("scales hold {} values, expected {groups} x {n}", scales.len());
    }
    let codes = layout::unpack(packed, &shape);
    let table: Vec<f32> = (0..=255u8).map(|c| fold::stored_value(format, c)).collect();
    let mut w = alloc::filled(&[k, n], 0f32)?;
    for c in 0..n {
        for r in 0..k {
            let g = r.checked_div(group).unwrap_or(0);
            w[r * n + c] = table[codes[c * k + r] as usize] * scales[g * n + c];
        }
    }
    Ok(w)
}

fn reference_quant_matmul(node: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, packed, scales) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    let gemm = quant_matmul::read(node).map_err(|e| KernelError::new(e.to_string()))?;
    let QuantGemm { k, n, activations, .. } = gemm;
    let Tensor::U8(p) = packed else { kbail!("packed weight must be uint8, got {}", packed.dtype()) };
    let Tensor::F32(s) = scales else { kbail!("scales must be float, got {}", scales.dtype()) };
    if !x.dtype().is_float() {
        kbail!("X must be a float tensor, got {}", x.dtype());
    }
    if x.shape().last() != Some(&k) {
        kbail!("X has shape {:?}, but the weight has K = {k}", x.shape());
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = n;
    // The output (N comes from the node's attributes), checked before the weight is unpacked.
    let mut y = alloc::filled(&shape, 0f32)?;
    let w = dequantize(&gemm, p.as_standard_layout().as_slice().expect("standard"), s.as_standard_layout().as_slice().expect("standard"))?;
    let mut xv: Vec<f32> = x.to_f32().iter().copied().collect();
    let m = xv.len() / k;
    if activations == Activations::Int8 {
        // What the int8 kernels multiply in effect: the rows quantized per block of 32.
        xv = fpx_quant::act8::Int8Activations::quantize(&xv, m, k).dequantized();
    }
    sgemm_rows(m, k, n, &xv, &w, &mut y);
    if let Some(b) = opt_arg(i, 3) {
        let b = b.to_f32();
        if b.len() != n {
            kbail!("bias has {} values, expected {n}", b.len());
        }
        let bv: Vec<f32> = b.iter().copied().collect();
        for row in y.chunks_mut(n) {
            for (o, bb) in row.iter_mut().zip(&bv) {
                *o += bb;
            }
        }
    }
    let out = Tensor::from(array(&shape, y));
    Ok(vec![if x.dtype() == DType::F32 { out } else { out.cast(x.dtype()) }])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add_in(FPX_DOMAIN, quant_matmul::OP_TYPE, reference_quant_matmul);
}
