// fpx elementwise kernels: unary ops, binary ops (same shape, and numpy broadcasting up to rank
// 6), casts. Compiled after ops_common.cuh; fpx-cuda (ops.rs) appends the wrappers:
//
//   fpx_<unary>_<t>(const T* x, T* y, fpx_u64 n)                 erf gelu gelu_tanh relu sigmoid
//                                                                 tanh sqrt reciprocal neg exp log
//   fpx_<binary>_<t>(const T* a, const T* b, T* y, fpx_u64 n)    add sub mul div pow max min,
//                                                                 a, b, y all of n elements
//   fpx_<binary>_bcast_<t>(const T* a, const T* b, T* y, fpx_bcast s)
//   fpx_cast_<from>_<to>(const From* x, To* y, fpx_u64 n)        f16_f32 f32_f16 i64_f32 i64_f16
//
// with <t> f16 (T = fpx_u16 bits) or f32. y may be x, a or b (in place): every element is read
// and written by the same thread. Same-shape kernels move 16-byte vectors when every pointer is
// 16-byte aligned (cuMemAlloc gives 256) and finish with a scalar tail; otherwise scalar.

// Numpy broadcasting as the `_bcast` kernels consume it (ops.rs `BcastArgs`, same layout):
// dims[0] is the innermost output dim; sa/sb are the inputs' element strides per output dim,
// 0 where that input is broadcast. Output element i (row-major) has the digits
// c_d = (i / (dims[0] * ... * dims[d-1])) % dims[d], d < rank, and reads a[sum c_d * sa[d]],
// b[sum c_d * sb[d]]. numel < 2^32 (so every offset fits 32 bits).
struct fpx_bcast {
    fpx_u32 rank, numel;
    fpx_u32 dims[FPX_MAX_RANK];
    fpx_u32 sa[FPX_MAX_RANK];
    fpx_u32 sb[FPX_MAX_RANK];
};
static_assert(sizeof(fpx_bcast) == 80, "fpx_bcast layout is shared with ops.rs BcastArgs");

namespace fpx {

// Unary op ids (ops.rs UnaryOp::id).
template <int OP>
__device__ __forceinline__ float unary_op(float x) {
    if (OP == 0) return erff(x);
    if (OP == 1) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));  // Gelu, approximate = none
    if (OP == 2) return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));  // Gelu tanh
    if (OP == 3) return x > 0.0f ? x : 0.0f;                                                             // Relu (NaN -> 0)
    if (OP == 4) return 1.0f / (1.0f + expf(-x));                                                        // Sigmoid
    if (OP == 5) return tanhf(x);
    if (OP == 6) return sqrtf(x);
    if (OP == 7) return 1.0f / x;
    if (OP == 8) return -x;
    if (OP == 9) return expf(x);
    if (OP == 10) return logf(x);
    return x;
}

// Binary op ids (ops.rs BinaryOp::id). Max and Min propagate NaN (numpy, fpx-runtime).
template <int OP>
__device__ __forceinline__ float binary_op(float a, float b) {
    if (OP == 0) return a + b;
    if (OP == 1) return a - b;
    if (OP == 2) return a * b;
    if (OP == 3) return a / b;
    if (OP == 4) return powf(a, b);
    if (OP == 5) return (a != a || a > b) ? a : b;
    if (OP == 6) return (a != a || a < b) ? a : b;
    return a;
}

template <class E, int OP>
__device__ __forceinline__ void unary(const typename E::T* x, typename E::T* y, fpx_u64 n) {
    const fpx_u64 i0 = thread_index(), step = thread_count();
    fpx_u64 done = 0;
    if (aligned16(x) && aligned16(y)) {
        const fpx_u64 nv = n / E::VEC;
        for (fpx_u64 v = i0; v < nv; v += step) {
            Pack<E> p;
            p.v = ((const fpx_u128*)x)[v];
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) p.e[j] = E::store(unary_op<OP>(E::load(p.e[j])));
            ((fpx_u128*)y)[v] = p.v;
        }
        done = nv * E::VEC;
    }
    for (fpx_u64 i = done + i0; i < n; i += step) y[i] = E::store(unary_op<OP>(E::load(x[i])));
}

template <class E, int OP>
__device__ __forceinline__ void binary(const typename E::T* a, const typename E::T* b, typename E::T* y, fpx_u64 n) {
    const fpx_u64 i0 = thread_index(), step = thread_count();
    fpx_u64 done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(y)) {
        const fpx_u64 nv = n / E::VEC;
        for (fpx_u64 v = i0; v < nv; v += step) {
            Pack<E> p, q;
            p.v = ((const fpx_u128*)a)[v];
            q.v = ((const fpx_u128*)b)[v];
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) p.e[j] = E::store(binary_op<OP>(E::load(p.e[j]), E::load(q.e[j])));
            ((fpx_u128*)y)[v] = p.v;
        }
        done = nv * E::VEC;
    }
    for (fpx_u64 i = done + i0; i < n; i += step) y[i] = E::store(binary_op<OP>(E::load(a[i]), E::load(b[i])));
}

template <class E, int OP>
__device__ __forceinline__ void binary_bcast(const typename E::T* a, const typename E::T* b, typename E::T* y, const fpx_bcast& s) {
    const fpx_u64 step = thread_count();
    for (fpx_u64 i = thread_index(); i < s.numel; i += step) {
        fpx_u32 r = (fpx_u32)i, oa = 0, ob = 0;
#pragma unroll
        for (int d = 0; d < FPX_MAX_RANK; ++d) {
            if (d < (int)s.rank) {
                const fpx_u32 q = r / s.dims[d], c = r - q * s.dims[d];
                oa += c * s.sa[d];
                ob += c * s.sb[d];
                r = q;
            }
        }
        y[i] = E::store(binary_op<OP>(E::load(a[oa]), E::load(b[ob])));
    }
}

template <class A, class B>
__device__ __forceinline__ void cast(const typename A::T* x, typename B::T* y, fpx_u64 n) {
    const fpx_u64 step = thread_count();
    for (fpx_u64 i = thread_index(); i < n; i += step) y[i] = B::store(A::load(x[i]));
}

}  // namespace fpx
