// fpx ReduceSum / ReduceMean over the last axis (other axes after a transpose; keepdims is a
// shape matter). Compiled after ops_common.cuh; wrappers:
//
//   fpx_reduce_sum_<t>(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)     y[rows]
//   fpx_reduce_mean_<t>(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)
//
// Row kernel (see ops_common.cuh); FP32 accumulation, one rounding to T at the end. An empty row
// (cols = 0) gives 0 for the sum and NaN for the mean (0 / 0).

namespace fpx {

template <class E, bool MEAN>
__device__ __forceinline__ void reduce(const typename E::T* x, typename E::T* y, fpx_u32 rows, fpx_u32 cols) {
    __shared__ float red[32];
    const RowPos p(rows, cols);
    float s = 0.0f;
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) s += E::load(x[p.base + c]);
    s = row_allreduce<false>(s, red);
    if (threadIdx.x == 0 && p.row < rows) y[p.row] = E::store(MEAN ? s / (float)cols : s);
}

}  // namespace fpx
