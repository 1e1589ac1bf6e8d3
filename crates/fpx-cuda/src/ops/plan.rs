//! Planners that turn ONNX shapes into op-kernel choices and arguments: numpy broadcasting
//! ([`broadcast_args`], [`binary_plan`]), Transpose ([`transpose_plan`]) and Gather
//! ([`gather_plan`]), with dims merged and copy units widened where the layout allows. The shape
//! math itself (broadcast rule, strides, merging of dims) is [`fpx_ir::shape`]'s.

use fpx_ir::shape::{broadcast_strides, merge_dims, row_major_strides};

use super::{launch_config, too_large, BinaryOp, Elem, OpKernel, OpShapeError, Width, MAX_INDEXED, MAX_RANK};

/// The `fpx_bcast` argument of the `_bcast` kernels (same layout): `dims[0]` is the innermost
/// output dim; `sa` / `sb` the inputs' element strides per output dim, 0 where broadcast.
/// Output element `i` (row-major) has digits `c_d = (i / (dims[0]···dims[d-1])) % dims[d]` for
/// `d < rank` and reads `a[Σ c_d sa[d]]`, `b[Σ c_d sb[d]]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BcastArgs {
    /// Dims in use (0..=6).
    pub rank: u32,
    /// Output elements.
    pub numel: u32,
    /// Output dims, innermost first.
    pub dims: [u32; MAX_RANK],
    /// `a`'s strides per output dim.
    pub sa: [u32; MAX_RANK],
    /// `b`'s strides per output dim.
    pub sb: [u32; MAX_RANK],
}

// SAFETY: a plain `repr(C)` struct of u32s, laid out as the template's `fpx_bcast` (80 bytes,
// checked by a static_assert there and a test here).
unsafe impl cudarc::driver::DeviceRepr for BcastArgs {}

/// The `fpx_perm` argument of `fpx_transpose_<w>` (same layout): `dims[0]` is the innermost
/// output dim, `strides[d]` the input's unit stride along output dim `d`; output unit `i` reads
/// `x[Σ c_d strides[d]]` with the digits of [`BcastArgs`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermArgs {
    /// Dims in use (0..=6).
    pub rank: u32,
    /// Output units.
    pub numel: u32,
    /// Output dims, innermost first.
    pub dims: [u32; MAX_RANK],
    /// Input strides per output dim.
    pub strides: [u32; MAX_RANK],
}

// SAFETY: a plain `repr(C)` struct of u32s, laid out as the template's `fpx_perm` (56 bytes).
unsafe impl cudarc::driver::DeviceRepr for PermArgs {}

/// Numpy broadcasting of two shapes ([`fpx_ir::shape::broadcast_shape`]): right-aligned, each
/// pair of dims equal or one of them 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpShapeError> {
    fpx_ir::shape::broadcast_shape(&[a, b]).ok_or_else(|| OpShapeError::Broadcast { a: a.to_vec(), b: b.to_vec() })
}

/// The [`BcastArgs`] for `a op b` (numpy broadcasting), with size-1 dims dropped and adjacent
/// dims merged where both inputs stay contiguous (or broadcast) across them. Errors: shapes
/// that do not broadcast, more than [`MAX_RANK`] dims after merging, 2^32 or more elements.
pub fn broadcast_args(a: &[usize], b: &[usize]) -> Result<BcastArgs, OpShapeError> {
    let out = broadcast_shape(a, b)?;
    let numel: usize = out.iter().product();
    too_large("broadcast output elements", numel, MAX_INDEXED)?;
    if numel == 0 {
        return Ok(BcastArgs::default());
    }
    let rank = out.len();
    let (sa, sb) = (broadcast_strides(a, rank), broadcast_strides(b, rank));
    let merged = merge_dims((0..rank).rev().map(|d| (out[d], [sa[d], sb[d]])));
    if merged.len() > MAX_RANK {
        return Err(OpShapeError::Rank { what: "broadcast", rank: merged.len() });
    }
    let mut args = BcastArgs { rank: merged.len() as u32, numel: numel as u32, ..Default::default() };
    for (d, (size, [x, y])) in merged.into_iter().enumerate() {
        (args.dims[d], args.sa[d], args.sb[d]) = (size as u32, x as u32, y as u32);
    }
    Ok(args)
}

/// How to run one binary elementwise node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPlan {
    /// [`OpKernel::Binary`] when both inputs are the output's shape after merging (pass
    /// `numel` as `n`), else [`OpKernel::BinaryBcast`] (pass `args`).
    pub kernel: OpKernel,
    /// The output shape.
    pub out_shape: Vec<usize>,
    /// Output elements.
    pub numel: usize,
    /// The broadcast argument (also filled for the same-shape kernel).
    pub args: BcastArgs,
}

impl BinaryPlan {
    /// [`launch_config`] for this plan.
    pub fn launch(&self) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
        launch_config(&self.kernel, self.numel, 0)
    }
}

/// Plans `a op b` for [`Elem`] `elem`: the same-shape kernel where it applies, else the broadcast
/// kernel with [`broadcast_args`].
pub fn binary_plan(op: BinaryOp, elem: Elem, a: &[usize], b: &[usize]) -> Result<BinaryPlan, OpShapeError> {
    let out_shape = broadcast_shape(a, b)?;
    let numel: usize = out_shape.iter().product();
    let args = broadcast_args(a, b)?;
    let same = args.rank == 0 || (args.rank == 1 && args.sa[0] == 1 && args.sb[0] == 1);
    let kernel = if same { OpKernel::Binary { op, elem } } else { OpKernel::BinaryBcast { op, elem } };
    Ok(BinaryPlan { kernel, out_shape, numel, args })
}

/// How to run one Transpose node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransposePlan {
    /// The permutation moves no data: the output is the input's bytes (alias or copy them).
    Copy {
        /// Bytes of the tensor.
        bytes: usize,
    },
    /// `fpx_transpose_tile_<w>(x, y, batch, rows, cols)`: `y[b][c][r] = x[b][r][c]`.
    Tile {
        /// [`OpKernel::TransposeTile`].
        kernel: OpKernel,
        /// Matrices.
        batch: u32,
        /// Input rows per matrix.
        rows: u32,
        /// Input columns per matrix.
        cols: u32,
    },
    /// `fpx_transpose_<w>(x, y, args)`.
    General {
        /// [`OpKernel::Transpose`] with the (possibly widened) unit.
        kernel: OpKernel,
        /// The argument, in units of the kernel's width.
        args: PermArgs,
    },
}

impl TransposePlan {
    /// [`launch_config`] for this plan; `None` for [`TransposePlan::Copy`].
    pub fn launch(&self) -> Option<([u32; 3], [u32; 3], u32)> {
        match self {
            TransposePlan::Copy { .. } => None,
            TransposePlan::Tile { kernel, batch, rows, cols } => {
                launch_config(kernel, *batch as usize * *rows as usize, *cols as usize).ok()
            }
            TransposePlan::General { kernel, args } => launch_config(kernel, args.numel as usize, 0).ok(),
        }
    }
}

/// Plans ONNX `Transpose(perm)` of a contiguous `shape` of `elem_bytes`-byte elements
/// (output dim `i` is input dim `perm[i]`). Size-1 dims are dropped and output dims that are
/// adjacent in the input merged; then: nothing moves → [`TransposePlan::Copy`]; a stack of
/// 2-D transposes (the innermost dim moves) → [`TransposePlan::Tile`]; otherwise
/// [`TransposePlan::General`], whose unit is widened up to 16 bytes when the innermost dim
/// stays innermost (e.g. `[B,S,H,64]` FP16 → `[B,H,S,64]` copies 16-byte units).
pub fn transpose_plan(shape: &[usize], perm: &[usize], elem_bytes: usize) -> Result<TransposePlan, OpShapeError> {
    let width = Width::from_bytes(elem_bytes)?;
    let rank = shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(OpShapeError::Perm { perm: perm.to_vec(), rank });
    }
    let numel: usize = shape.iter().product();
    too_large("transpose elements", numel, MAX_INDEXED)?;
    let bytes = numel * elem_bytes;
    let cs = row_major_strides(shape);
    let merged = merge_dims(perm.iter().rev().map(|&p| (shape[p], [cs[p]])));
    if numel == 0 || merged.is_empty() || (merged.len() == 1 && merged[0].1[0] == 1) {
        return Ok(TransposePlan::Copy { bytes });
    }
    if merged.len() > MAX_RANK {
        return Err(OpShapeError::Rank { what: "transpose", rank: merged.len() });
    }
    // Output (innermost first) d0, d1[, d2] with input strides 1 along d1: the input is
    // [d2][d0][d1] (batch d2) and the output [d2][d1][d0].
    let tile = match merged.as_slice() {
        [(d0, [s0]), (d1, [1])] if *s0 == *d1 => Some((1, *d0, *d1)),
        [(d0, [s0]), (d1, [1]), (d2, [s2])] if *s0 == *d1 && *s2 == d0 * d1 => Some((*d2, *d0, *d1)),
        _ => None,
    };
    if let Some((batch, rows, cols)) = tile {
        return Ok(TransposePlan::Tile {
            kernel: OpKernel::TransposeTile(width),
            batch: batch as u32,
            rows: rows as u32,
            cols: cols as u32,
        });
    }
    // Widen: when the innermost output dim is the input's innermost (stride 1), every other
    // stride is a multiple of its size, so units of up to 16 bytes dividing its bytes work.
    let (d0, [s0]) = merged[0];
    let unit = if s0 == 1 { 1 << (d0 * elem_bytes).trailing_zeros().min(4) } else { elem_bytes };
    let k = unit / elem_bytes;
    let mut args = PermArgs { rank: merged.len() as u32, numel: (numel / k) as u32, ..Default::default() };
    for (d, (size, [st])) in merged.into_iter().enumerate() {
        let (size, st) = if k == 1 {
            (size, st)
        } else if d == 0 {
            (size / k, 1)
        } else {
            (size, st / k)
        };
        (args.dims[d], args.strides[d]) = (size as u32, st as u32);
    }
    Ok(TransposePlan::General { kernel: OpKernel::Transpose(Width::from_bytes(unit)?), args })
}

/// How to run one Gather node: the arguments of `fpx_gather_<w>` after `data`, `idx`, `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherPlan {
    /// [`OpKernel::Gather`] with the (possibly widened) unit.
    pub kernel: OpKernel,
    /// The output shape: `data[..axis] ++ indices ++ data[axis + 1..]`.
    pub out_shape: Vec<usize>,
    /// Product of the dims before the axis.
    pub outer: u32,
    /// The gathered dim's size.
    pub axis_dim: u32,
    /// Number of indices.
    pub n_idx: u32,
    /// Units per gathered slice (product of the dims after the axis, in units).
    pub inner: u32,
    /// Output units (`outer * n_idx * inner`): the `n` of [`launch_config`].
    pub units: usize,
}

impl GatherPlan {
    /// [`launch_config`] for this plan.
    pub fn launch(&self) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
        launch_config(&self.kernel, self.units, 0)
    }
}

/// Plans ONNX `Gather(data, indices, axis)` for `elem_bytes`-byte elements; the unit is widened
/// up to 16 bytes when the bytes of one gathered slice allow.
pub fn gather_plan(data_shape: &[usize], axis: i64, indices_shape: &[usize], elem_bytes: usize) -> Result<GatherPlan, OpShapeError> {
    Width::from_bytes(elem_bytes)?;
    let rank = data_shape.len();
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(OpShapeError::Axis { axis, rank });
    }
    let a = a as usize;
    let outer: usize = data_shape[..a].iter().product();
    let inner: usize = data_shape[a + 1..].iter().product();
    let n_idx: usize = indices_shape.iter().product();
    let slice_bytes = inner * elem_bytes;
    let unit = if slice_bytes == 0 { elem_bytes } else { 1 << slice_bytes.trailing_zeros().min(4) };
    let inner_units = slice_bytes / unit;
    let units = outer.saturating_mul(n_idx).saturating_mul(inner_units);
    too_large("gather output units", units, MAX_INDEXED)?;
    too_large("gather dims", outer.max(data_shape[a]).max(n_idx).max(inner_units), MAX_INDEXED)?;
    let mut out_shape = data_shape[..a].to_vec();
    out_shape.extend_from_slice(indices_shape);
    out_shape.extend_from_slice(&data_shape[a + 1..]);
    Ok(GatherPlan {
        kernel: OpKernel::Gather(Width::from_bytes(unit)?),
        out_shape,
        outer: outer as u32,
        axis_dim: data_shape[a] as u32,
        n_idx: n_idx as u32,
        inner: inner_units as u32,
        units,
    })
}
