//! Launch geometry of the op kernels: how each kernel's grid is derived ([`Geometry`]) and
//! [`launch_config`], which turns a work size into `(grid, block, shared bytes)`.

use super::{too_large, OpKernel, OpShapeError, MAX_GRID, MAX_INDEXED, OP_THREADS};

/// How a kernel's grid is derived (see [`launch_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// Grid-stride over `n` elements, `vec` per thread step: 1-D blocks of 256,
    /// `min(ceil(ceil(n / vec) / 256), 65535)` blocks. `n < 2^32` when `indexed32`.
    Elements {
        /// Elements one thread handles per step (a 16-byte vector, or 1).
        vec: u32,
        /// The kernel decomposes indices in 32 bits.
        indexed32: bool,
    },
    /// One row of `cols` per `TX` threads ([`row_threads`]), `256 / TX` rows per block:
    /// block `(TX, 256 / TX)`, `ceil(rows / (256 / TX))` blocks.
    Rows,
    /// 32 × 32 tiles of a `(batch * rows) × cols` matrix: block `(32, 8)`, grid
    /// `(ceil(cols / 32), min(ceil(batch * rows / 32), 65535))`, rows grid-stride.
    Tiles,
}

impl OpKernel {
    /// How its grid is derived.
    pub fn geometry(&self) -> Geometry {
        match self {
            OpKernel::Unary { elem, .. } | OpKernel::Binary { elem, .. } => Geometry::Elements { vec: elem.vec(), indexed32: false },
            OpKernel::Cast(_) => Geometry::Elements { vec: 1, indexed32: false },
            OpKernel::BinaryBcast { .. } | OpKernel::Gather(_) | OpKernel::Transpose(_) => Geometry::Elements { vec: 1, indexed32: true },
            OpKernel::LayerNorm(_) | OpKernel::Softmax(_) | OpKernel::Reduce { .. } => Geometry::Rows,
            OpKernel::TransposeTile(_) => Geometry::Tiles,
        }
    }
}

/// Threads per row (`TX`) of the row kernels for `cols` columns: the power of two nearest
/// above `cols / 8`, clamped to 32..=256 (about 8 columns per thread and pass).
pub fn row_threads(cols: usize) -> u32 {
    cols.div_ceil(8).next_power_of_two().clamp(32, OP_THREADS as usize) as u32
}

/// `(grid, block, dynamic shared bytes)` for `kernel` on `n` work items (elements or units
/// for the element-parallel kernels, rows for the row kernels, batch × rows for the tiled
/// transpose) of `cols` columns (row kernels and tiled transpose only; ignored otherwise). See
/// [`Geometry`]. `n == 0` gives grid x = 0: nothing to launch. Errors when a count exceeds the
/// kernel's index math (2^32 - 1 units, 2^31 - 1 rows or columns).
pub fn launch_config(kernel: &OpKernel, n: usize, cols: usize) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
    let grid_for = |units: usize| units.div_ceil(OP_THREADS as usize).min(MAX_GRID as usize) as u32;
    match kernel.geometry() {
        Geometry::Elements { vec, indexed32 } => {
            if indexed32 {
                too_large("elements", n, MAX_INDEXED)?;
            }
            Ok(([grid_for(n.div_ceil(vec as usize)), 1, 1], [OP_THREADS, 1, 1], 0))
        }
        Geometry::Rows => {
            too_large("rows", n, i32::MAX as usize)?;
            too_large("columns", cols, i32::MAX as usize)?;
            let tx = row_threads(cols);
            let ty = OP_THREADS / tx;
            Ok(([n.div_ceil(ty as usize) as u32, 1, 1], [tx, ty, 1], 0))
        }
        Geometry::Tiles => {
            too_large("batch x rows", n, MAX_INDEXED)?;
            too_large("columns", cols, i32::MAX as usize)?;
            too_large("elements", n.saturating_mul(cols), MAX_INDEXED)?;
            if n == 0 || cols == 0 {
                return Ok(([0, 1, 1], [32, 8, 1], 0));
            }
            Ok(([cols.div_ceil(32) as u32, n.div_ceil(32).min(MAX_GRID as usize) as u32, 1], [32, 8, 1], 0))
        }
    }
}
