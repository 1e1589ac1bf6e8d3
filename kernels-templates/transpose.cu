// fpx Transpose: a general permutation copy up to rank 6, and a shared-memory tiled kernel for
// the case that moves the innermost dim (a stack of 2-D transposes, e.g. K^T in attention).
// Compiled after ops_common.cuh; wrappers, one per copy unit (bytes only, any element type):
//
//   fpx_transpose_<w>(const U* x, U* y, fpx_perm p)                       <w> b8 b16 b32 b64 b128
//   fpx_transpose_tile_<w>(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols)
//                                                                          <w> b8 b16 b32 b64
//
// ops.rs `transpose_plan` turns (shape, perm, element size) into one of these (or a plain copy
// when the permutation moves nothing), merging dims that stay adjacent, dropping size-1 dims
// and, for the general kernel, widening the unit up to 16 bytes when the innermost dim stays
// innermost. y must not overlap x.

// The general kernel's argument (ops.rs `PermArgs`, same layout): dims[0] is the innermost
// output dim, strides[d] the input's unit stride along output dim d. Output unit i (row-major)
// has the digits c_d = (i / (dims[0] * ... * dims[d-1])) % dims[d], d < rank, and reads
// x[sum c_d * strides[d]]. numel < 2^32.
struct fpx_perm {
    fpx_u32 rank, numel;
    fpx_u32 dims[FPX_MAX_RANK];
    fpx_u32 strides[FPX_MAX_RANK];
};
static_assert(sizeof(fpx_perm) == 56, "fpx_perm layout is shared with ops.rs PermArgs");

namespace fpx {

template <class U>
__device__ __forceinline__ void transpose(const U* x, U* y, const fpx_perm& p) {
    const fpx_u64 step = thread_count();
    for (fpx_u64 i = thread_index(); i < p.numel; i += step) {
        fpx_u32 r = (fpx_u32)i, off = 0;
#pragma unroll
        for (int d = 0; d < FPX_MAX_RANK; ++d) {
            if (d < (int)p.rank) {
                const fpx_u32 q = r / p.dims[d];
                off += (r - q * p.dims[d]) * p.strides[d];
                r = q;
            }
        }
        y[i] = x[off];
    }
}

// y[b][c][r] = x[b][r][c] for `batch` matrices x[b] of [rows][cols]. Block (32, 8); the
// (batch * rows) x cols input is cut into 32 x 32 tiles: blockIdx.x = column tile,
// blockIdx.y (grid-stride) = tile of the flattened row index gr = b * rows + r, so a tile may
// straddle two matrices. Reads and writes are coalesced through a padded shared tile.
// batch * rows * cols < 2^32 (checked by transpose_plan).
template <class U>
__device__ __forceinline__ void transpose_tile(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols) {
    __shared__ U tile[32][33];
    const fpx_u32 total = batch * rows, tx = threadIdx.x, ty = threadIdx.y, c0 = blockIdx.x * 32;
    for (fpx_u64 r0 = (fpx_u64)blockIdx.y * 32; r0 < total; r0 += (fpx_u64)gridDim.y * 32) {
#pragma unroll
        for (int j = 0; j < 32; j += 8) {
            const fpx_u64 gr = r0 + ty + j;
            if (gr < total && c0 + tx < cols) tile[ty + j][tx] = x[gr * cols + c0 + tx];
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 32; j += 8) {
            const fpx_u32 c = c0 + ty + j;
            const fpx_u64 gr = r0 + tx;
            if (gr < total && c < cols) {
                const fpx_u32 b = (fpx_u32)gr / rows, r = (fpx_u32)gr - b * rows;
                y[((fpx_u64)b * cols + c) * rows + r] = tile[tx][ty + j];
            }
        }
        __syncthreads();
    }
}

}  // namespace fpx
