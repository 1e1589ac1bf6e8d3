//! `fpx:QuantMatMul` by the reference path (and `fpx:QuantGather`, the quantized embedding lookup): unpack the 4+2 planes, rebuild each weight from
//! its bias-shifted FP16 value and the folded scale, then multiply in f32 (with int8
//! activations, X quantized and dequantized first). The fast kernels
//! (LLVM, CUDA) are checked against this.

use super::matmul::sgemm_rows;
use super::{alloc, arg, array, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ops::quant_matmul::{self, Epilogue};
use fpx_ir::ops::FPX_DOMAIN;
use fpx_ir::{DType, Node, Tensor};
use fpx_quant::act8::Activations;
use fpx_quant::layout;
use fpx_quant::lorc::{FactorStorage, QuantizedFactors};
use fpx_quant::{fold, QuantGemm};

type Res = Result<Vec<Tensor>, KernelError>;

/// The LoRC factors of a QuantMatMul in f32, ready to apply: `u` `[k, r]` and `v` `[r, n]`
/// (inputs [`quant_matmul::LORC_U_INPUT`] and [`quant_matmul::LORC_V_INPUT`], stored FP16 or as
/// quantized codes with scales in [`quant_matmul::LORC_SCALES_INPUT`]). The executor converts
/// constant factors once, when it is built.
#[derive(Debug, Clone, PartialEq)]
pub struct LorcFactors {
    u: Vec<f32>,
    v: Vec<f32>,
    rank: usize,
    k: usize,
    n: usize,
}

/// A QuantMatMul's LoRC inputs as given: `U`, `V`, the scales of quantized factors, and how
/// the node says they are stored.
#[derive(Debug, Clone, Copy)]
pub struct LorcInputs<'a> {
    /// Input 5.
    pub u: Option<&'a Tensor>,
    /// Input 6.
    pub v: Option<&'a Tensor>,
    /// Input 7 (quantized factors only).
    pub scales: Option<&'a Tensor>,
    /// The node's `lorc_format`.
    pub storage: FactorStorage,
}

impl<'a> LorcInputs<'a> {
    /// The LoRC inputs of `node` among its arguments `args`.
    pub fn of(node: &Node, args: &[Option<&'a Tensor>]) -> Result<LorcInputs<'a>, KernelError> {
        let storage = quant_matmul::lorc_storage(node).map_err(|e| KernelError::new(e.to_string()))?;
        Ok(LorcInputs {
            u: opt_arg(args, quant_matmul::LORC_U_INPUT),
            v: opt_arg(args, quant_matmul::LORC_V_INPUT),
            scales: opt_arg(args, quant_matmul::LORC_SCALES_INPUT),
            storage,
        })
    }
}

impl LorcFactors {
    /// The factors a node's LoRC inputs hold, checked against `[k, r]` and `[r, n]` (float
    /// tensors) or against the code lengths the scales' rank gives (quantized); `None` when
    /// the node has none.
    pub fn from_inputs(inputs: LorcInputs<'_>, k: usize, n: usize) -> Result<Option<LorcFactors>, KernelError> {
        let (u, v) = match (inputs.u, inputs.v) {
            (None, None) => return Ok(None),
            (Some(u), Some(v)) => (u, v),
            _ => kbail!("the LoRC factors U (input 5) and V (input 6) go together: give both or neither"),
        };
        match inputs.storage {
            FactorStorage::F16 => {
                let rank = match (u.shape(), v.shape()) {
                    (&[uk, ur], &[vr, vn]) if uk == k && vn == n && ur == vr && ur > 0 => ur,
                    (a, b) => kbail!("the LoRC factors are {a:?} and {b:?}, not [{k}, r] and [r, {n}]"),
                };
                Ok(Some(LorcFactors { u: u.to_f32().iter().copied().collect(), v: v.to_f32().iter().copied().collect(), rank, k, n }))
            }
            FactorStorage::Quantized(format) => {
                let bytes = |t: &Tensor, what: &str| match t {
                    Tensor::U8(a) => Ok(a.iter().copied().collect::<Vec<u8>>()),
                    other => {
                        Err(KernelError::new(format!("{} LoRC factor {what} must be uint8 codes, not {}", format.name(), other.dtype())))
                    }
                };
                let Some(scales) = inputs.scales else { kbail!("quantized LoRC factors need their scales (input 7)") };
                if scales.shape().len() != 2 || scales.shape()[0] != 2 {
                    kbail!("the LoRC scales are {:?}, not [2, r]", scales.shape());
                }
                let scales: Vec<f32> = scales.to_f32().iter().copied().collect();
                let q = QuantizedFactors::from_parts(format, k, n, bytes(u, "U")?, bytes(v, "V")?, scales)
                    .map_err(|e| KernelError::new(e.to_string()))?;
                let lr = q.dequantize();
                Ok(Some(LorcFactors { u: lr.u, v: lr.v, rank: lr.rank, k, n }))
            }
        }
    }

    /// `T = X · U` (`m × r`) for the `m` rows `x` (`m × k`): the first half of the correction,
    /// whose second half ([`LorcProjection::add_to`]) a product adds block by block in its
    /// epilogue, so no `m × n` correction is ever stored.
    pub fn project(&self, x: &[f32], m: usize) -> Result<LorcProjection<'_>, KernelError> {
        use rayon::prelude::*;
        let (r, k) = (self.rank, self.k);
        if x.len() != m * k {
            kbail!("X holds {} values, not {m} rows of {k}", x.len());
        }
        let mut t = alloc::filled(&[m, r], 0f32)?;
        let row = |(xr, tr): (&[f32], &mut [f32])| {
            for (xp, ur) in xr.iter().zip(self.u.chunks_exact(r)) {
                tr.iter_mut().zip(ur).for_each(|(t, u)| *t += xp * u);
            }
        };
        if m * k * r >= 1 << 16 && rayon::current_num_threads() > 1 {
            x.par_chunks(k).zip(t.par_chunks_mut(r)).for_each(row);
        } else {
            x.chunks(k).zip(t.chunks_mut(r)).for_each(row);
        }
        Ok(LorcProjection { factors: self, t })
    }

    /// The whole correction `(X · U) · V` (`m × n`, row-major) for the `m` rows `x` (`m × k`):
    /// what the reference path adds.
    pub fn apply(&self, x: &[f32], m: usize) -> Result<Vec<f32>, KernelError> {
        let projection = self.project(x, m)?;
        let n = self.n;
        let mut out = alloc::filled(&[m, n], 0f32)?;
        for (row, o) in out.chunks_mut(n.max(1)).enumerate().take(m) {
            projection.add_to(o, row, 0);
        }
        Ok(out)
    }
}

/// A LoRC correction ready for a product's epilogue: `T = X · U` and the factors
/// ([`LorcFactors::project`]).
#[derive(Debug)]
pub struct LorcProjection<'a> {
    factors: &'a LorcFactors,
    t: Vec<f32>,
}

impl LorcProjection<'_> {
    /// Adds row `row` of the correction's columns `c .. c + p.len()` to `p`:
    /// `p[i] += Σ_j T[row][j] · V[j][c + i]`.
    pub fn add_to(&self, p: &mut [f32], row: usize, c: usize) {
        let (r, n) = (self.factors.rank, self.factors.n);
        let (t, width) = (&self.t[row * r..(row + 1) * r], p.len());
        for (tj, vr) in t.iter().zip(self.factors.v.chunks_exact(n)) {
            p.iter_mut().zip(&vr[c..c + width]).for_each(|(o, v)| *o += tj * v);
        }
    }

    /// Rows projected.
    pub fn rows(&self) -> usize {
        self.t.len() / self.factors.rank.max(1)
    }

    /// The corrected product's N.
    pub fn n(&self) -> usize {
        self.factors.n
    }
}

/// The LoRC correction `(X · U) · V` (`m × n`, row-major) of a QuantMatMul with LoRC inputs
/// `inputs`, for the `m` rows `x`; `None` when the node has no factors. Both the reference path
/// and the native one add it to the product before the bias and the epilogue.
pub fn lorc_correction(inputs: LorcInputs<'_>, x: &[f32], m: usize, k: usize, n: usize) -> Result<Option<Vec<f32>>, KernelError> {
    LorcFactors::from_inputs(inputs, k, n)?.map(|f| f.apply(x, m)).transpose()
}

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
    let epilogue = quant_matmul::epilogue(node, &gemm).map_err(|e| KernelError::new(e.to_string()))?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = n;
    // The product (N comes from the node's attributes), checked before the weight is unpacked.
    let mut y = alloc::filled(&shape, 0f32)?;
    let w = dequantize(&gemm, p.as_standard_layout().as_slice().expect("standard"), s.as_standard_layout().as_slice().expect("standard"))?;
    let mut xv: Vec<f32> = x.to_f32().iter().copied().collect();
    let m = xv.len() / k;
    // The low-rank correction multiplies X as given (before the activations are rounded).
    let correction = lorc_correction(LorcInputs::of(node, i)?, &xv, m, k, n)?;
    if activations == Activations::Int8 {
        // What the int8 kernels multiply in effect: the rows quantized per block of 32.
        xv = fpx_quant::act8::Int8Activations::quantize(&xv, m, k).dequantized();
    }
    if let Some(format) = activations.fp8_format() {
        // The rows rounded to FP8 per row, from the codes (the definition, not the fast path).
        xv = fpx_quant::act_fp8::Fp8Activations::quantize(&xv, m, k, format).map_err(|e| KernelError::new(e.to_string()))?.dequantized();
    }
    sgemm_rows(m, k, n, &xv, &w, &mut y);
    if let Some(c) = correction {
        y.iter_mut().zip(c).for_each(|(y, c)| *y += c);
    }
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
    let residual = opt_arg(i, quant_matmul::RESIDUAL_INPUT);
    let (y, shape) = apply_epilogue(&epilogue, y, shape, residual)?;
    let mut out = Tensor::from(array(&shape, y));
    if let Some(r) = residual.filter(|r| r.shape() != shape.as_slice()) {
        out = broadcast_residual(out, r)?;
    }
    Ok(vec![if x.dtype() == DType::F32 { out } else { out.cast(x.dtype()) }])
}

/// `y + residual` with ONNX broadcasting, for a residual whose shape is not Y's (the fused
/// `Add`'s semantics), within the tensor budget.
pub(crate) fn broadcast_residual(y: Tensor, residual: &Tensor) -> Result<Tensor, KernelError> {
    let shape = super::broadcast_shape(&[y.shape(), residual.shape()])?;
    alloc::check_t::<f32>(&shape)?;
    let (Tensor::F32(a), r) = (&y, residual.to_f32()) else { kbail!("the product must be float") };
    Ok(Tensor::from((a + &r).into_dyn()))
}

/// Y from the product `p` (of `shape`) by the node's epilogue, each row in f64
/// ([`quant_matmul::Epilogue::apply_row_f64`]); returns Y and its shape.
fn apply_epilogue(
    epilogue: &Epilogue,
    p: Vec<f32>,
    mut shape: Vec<usize>,
    residual: Option<&Tensor>,
) -> Result<(Vec<f32>, Vec<usize>), KernelError> {
    if epilogue.is_identity() {
        return Ok((p, shape));
    }
    let n = *shape.last().expect("rank >= 1");
    *shape.last_mut().expect("rank >= 1") = epilogue.output_columns(n);
    let residual: Option<Vec<f64>> = match residual {
        // A residual of another shape is added with broadcasting by the caller.
        Some(r) if r.shape() != shape.as_slice() => None,
        Some(r) => Some(r.to_f64_vec()),
        None => None,
    };
    let width = epilogue.output_columns(n);
    let mut y = alloc::filled(&shape, 0f32)?;
    for (r, (prow, yrow)) in p.chunks(n.max(1)).zip(y.chunks_mut(width.max(1))).enumerate() {
        let prow: Vec<f64> = prow.iter().map(|&v| v as f64).collect();
        let rrow = residual.as_ref().map(|res| &res[r * width..(r + 1) * width]);
        for (o, v) in yrow.iter_mut().zip(epilogue.apply_row_f64(&prow, rrow)) {
            *o = v as f32;
        }
    }
    Ok((y, shape))
}

/// `fpx:QuantGather`: each index's row of the table (output channel of the stored `W[K, N]`),
/// decoded and scaled alone; the rest of the table is never touched.
fn quant_gather(node: &Node, i: &[Option<&Tensor>]) -> Res {
    let (packed, scales, indices) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    let gemm = quant_matmul::read(node).map_err(|e| KernelError::new(e.to_string()))?;
    let QuantGemm { format, k, n, group_size, .. } = gemm;
    let Tensor::U8(p) = packed else { kbail!("packed table must be uint8, got {}", packed.dtype()) };
    let Tensor::F32(s) = scales else { kbail!("scales must be float, got {}", scales.dtype()) };
    let (p, s) = (p.as_standard_layout(), s.as_standard_layout());
    let (p, s) = (p.as_slice().expect("standard"), s.as_slice().expect("standard"));
    let shape = gemm.packed_shape();
    if p.len() != shape.total_bytes() || s.len() != gemm.groups() * n {
        kbail!("the packed table ({} bytes, {} scales) does not hold {} [{n} rows x {k}]", p.len(), s.len(), format.name());
    }
    let idx: Vec<i64> = match indices {
        Tensor::I64(a) => a.iter().copied().collect(),
        Tensor::I32(a) => a.iter().map(|&v| v as i64).collect(),
        t => kbail!("indices must be int32 or int64, got {}", t.dtype()),
    };
    let mut out_shape = indices.shape().to_vec();
    out_shape.push(k);
    let mut out = alloc::filled(&out_shape, 0f32)?;
    let table: Vec<f32> = (0..=255u8).map(|c| fold::stored_value(format, c)).collect();
    let mut codes = vec![0u8; k];
    // Per scale group of the row: the code table times the group's scale.
    let group = if group_size == 0 { k.max(1) } else { group_size };
    for (row_out, &ix) in out.chunks_mut(k.max(1)).zip(&idx) {
        let row = if ix < 0 { ix + n as i64 } else { ix };
        if !(0..n as i64).contains(&row) {
            kbail!("index {ix} is out of range for a table of {n} rows");
        }
        let row = row as usize;
        layout::unpack_row_into(p, &shape, row, &mut codes);
        for (g, (outs, cs)) in row_out.chunks_mut(group).zip(codes.chunks(group)).enumerate() {
            let scale = s[g * n + row];
            for (o, &c) in outs.iter_mut().zip(cs) {
                *o = table[c as usize] * scale;
            }
        }
    }
    Ok(vec![Tensor::from(array(&out_shape, out))])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add_in(FPX_DOMAIN, quant_matmul::OP_TYPE, reference_quant_matmul);
    r.add_in(FPX_DOMAIN, fpx_ir::ops::quant_gather::OP_TYPE, quant_gather);
}
