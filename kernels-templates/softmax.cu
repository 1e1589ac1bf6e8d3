// fpx Softmax over the last axis (ONNX Softmax opset >= 13 with axis = -1; other axes after a
// transpose). Compiled after ops_common.cuh; wrappers:
//
//   fpx_softmax_<t>(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)
//
// y may be x. Row kernel (see ops_common.cuh). FP32, max-subtracted, as fpx-runtime's
// reference: m = max(x) (NaN ignored, as f64::max), s = sum(exp(x - m)), y = exp(x - m) * (1/s).
// A row of -inf gives NaN, as the reference. No mask input: the graph adds it before Softmax.

namespace fpx {

template <class E>
__device__ __forceinline__ void softmax(const typename E::T* x, typename E::T* y, fpx_u32 rows, fpx_u32 cols) {
    __shared__ float red[32];
    const RowPos p(rows, cols);
    float m = neg_inf();
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) m = fmaxf(m, E::load(x[p.base + c]));
    m = row_allreduce<true>(m, red);
    float s = 0.0f;
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) s += expf(E::load(x[p.base + c]) - m);
    const float inv = 1.0f / row_allreduce<false>(s, red);
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) y[p.base + c] = E::store(expf(E::load(x[p.base + c]) - m) * inv);
}

}  // namespace fpx
