// fpx LayerNormalization over the last axis (ONNX LayerNormalization with axis = -1, or any
// axis after viewing the input as [rows][cols]). Compiled after ops_common.cuh; wrappers:
//
//   fpx_layernorm_<t>(const T* x, const T* gamma, const T* beta, T* y, fpx_u32 rows, fpx_u32 cols, float eps)
//
// gamma and beta are [cols] of the same type, or null (gamma 1, beta 0). y may be x.
// Row kernel (see ops_common.cuh): TX threads per row, TY rows per block. Two-pass in FP32,
// as fpx-runtime's reference: mean = sum(x) / cols, var = sum((x - mean)^2) / cols,
// y = (x - mean) / sqrt(var + eps) * gamma + beta. The row is read three times (the second and
// third reads mostly hit L1/L2).

namespace fpx {

template <class E>
__device__ __forceinline__ void layernorm(const typename E::T* x, const typename E::T* gamma, const typename E::T* beta,
                                          typename E::T* y, fpx_u32 rows, fpx_u32 cols, float eps) {
    __shared__ float red[32];
    const RowPos p(rows, cols);
    float s = 0.0f;
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) s += E::load(x[p.base + c]);
    const float mean = row_allreduce<false>(s, red) / (float)cols;
    float q = 0.0f;
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) {
        const float d = E::load(x[p.base + c]) - mean;
        q += d * d;
    }
    const float var = row_allreduce<false>(q, red) / (float)cols;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x) {
        float v = (E::load(x[p.base + c]) - mean) * rstd;
        if (gamma) v *= E::load(gamma[c]);
        if (beta) v += E::load(beta[c]);
        y[p.base + c] = E::store(v);
    }
}

}  // namespace fpx
