// fpx Gather along one axis with int64 indices (ONNX Gather). Compiled after ops_common.cuh;
// wrappers, one per copy unit (the kernels only move bytes, so one serves every element type of
// that size, and ops.rs `gather_plan` widens the unit up to 16 bytes when the inner block allows):
//
//   fpx_gather_<w>(const U* data, const fpx_i64* idx, U* y, fpx_u32 outer, fpx_u32 axis_dim,
//                  fpx_u32 n_idx, fpx_u32 inner, int* err)        <w> b8 b16 b32 b64 b128
//
// data is viewed as [outer][axis_dim][inner] units, idx as [n_idx], y as [outer][n_idx][inner]:
// y[o][j][i] = data[o][idx[j]][i]. A negative index is wrapped (+ axis_dim); one still outside
// [0, axis_dim) writes zero units and sets *err to 1 (err may be null; it is never cleared
// here). outer * n_idx * inner < 2^32 (checked by gather_plan).

namespace fpx {

template <class U>
__device__ __forceinline__ void gather(const U* data, const fpx_i64* idx, U* y, fpx_u32 outer, fpx_u32 axis_dim, fpx_u32 n_idx,
                                       fpx_u32 inner, int* err) {
    const fpx_u64 total = (fpx_u64)outer * n_idx * inner, step = thread_count();
    for (fpx_u64 i = thread_index(); i < total; i += step) {
        const fpx_u32 r = (fpx_u32)i;
        const fpx_u32 in = r % inner, t = r / inner;
        const fpx_u32 j = t % n_idx, o = t / n_idx;
        fpx_i64 k = idx[j];
        if (k < 0) k += axis_dim;
        if (k < 0 || k >= (fpx_i64)axis_dim) {
            y[i] = U{};
            if (err) atomicOr(err, 1);
        } else {
            y[i] = data[((fpx_u64)o * axis_dim + (fpx_u64)k) * inner + in];
        }
    }
}

}  // namespace fpx
