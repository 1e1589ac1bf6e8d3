// fpx op kernels: the prelude of every op family (elementwise.cu, layernorm.cu, softmax.cu,
// reduce.cu, gather.cu, transpose.cu), for NVRTC.
//
// Header-free like fp6_gemm.cu: own typedefs, FP16 as raw `unsigned short` bits converted with
// PTX `cvt`; NVRTC's built-in device functions (expf, erff, tanhf, powf, __shfl_xor_sync,
// atomicOr) need no header. fpx-cuda (crates/fpx-cuda/src/ops.rs) compiles each family as this
// prelude + the family file + generated `extern "C" __global__` wrappers with stable names
// (fpx_add_f16, fpx_layernorm_f32, fpx_gather_b128, ...).
//
// Conventions shared by all families:
//   - every block has FPX_THREADS (256) threads; every wrapper carries __launch_bounds__(256);
//   - element-parallel kernels loop grid-stride, so any grid >= 1 covers every element
//     (ops.rs `launch_config` picks ceil(units / 256) blocks, at most 65535);
//   - math is FP32 whatever the storage type; an FP16 result is rounded to nearest even once;
//   - row kernels (layernorm, softmax, reduce) run a 2-D block (TX, TY): TX = blockDim.x
//     threads (a power of two, 32..256) share one row, TY = 256 / TX rows per block,
//     row = blockIdx.x * TY + threadIdx.y; the threads of a row stride over its columns.

typedef unsigned int fpx_u32;
typedef unsigned short fpx_u16;
typedef unsigned char fpx_u8;
typedef unsigned long long fpx_u64;
typedef long long fpx_i64;

// 16 bytes moved as one vector access (ld/st.global.v4.u32).
struct alignas(16) fpx_u128 {
    fpx_u32 x, y, z, w;
};

#define FPX_THREADS 256
#define FPX_MAX_RANK 6

namespace fpx {

__device__ __forceinline__ float h2f(fpx_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ fpx_u16 f2h(float f) {
    fpx_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Element types: storage type T, conversion to and from FP32, elements per 16-byte vector.
struct F16 {
    typedef fpx_u16 T;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ float load(T v) { return h2f(v); }
    static __device__ __forceinline__ T store(float v) { return f2h(v); }
};

struct F32 {
    typedef float T;
    static constexpr int VEC = 4;
    static __device__ __forceinline__ float load(T v) { return v; }
    static __device__ __forceinline__ T store(float v) { return v; }
};

// Cast source only (int64 -> float rounds to nearest, as Rust's `as f32`).
struct I64 {
    typedef fpx_i64 T;
    static constexpr int VEC = 2;
    static __device__ __forceinline__ float load(T v) { return (float)v; }
};

// One 16-byte vector seen as E::VEC elements.
template <class E>
union Pack {
    fpx_u128 v;
    typename E::T e[E::VEC];
};

__device__ __forceinline__ bool aligned16(const void* p) { return ((fpx_u64)p & 15) == 0; }

// Grid-stride loop bounds: this thread's first index and the stride.
__device__ __forceinline__ fpx_u64 thread_index() { return (fpx_u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ fpx_u64 thread_count() { return (fpx_u64)gridDim.x * blockDim.x; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Sum (MAX = false) or maximum (MAX = true) of `v` over the TX = blockDim.x threads of this
// row. Every thread of the block must call it (it has barriers when TX > 32), idle rows
// included; every thread of a row gets the same bits (xor butterfly, then a fixed-order sum of
// the row's warps). red: __shared__ float[32] scratch.
template <bool MAX>
__device__ __forceinline__ float row_allreduce(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    if (blockDim.x <= 32) return v;
    const int warps = blockDim.x >> 5, first = threadIdx.y * warps;
    __syncthreads();  // every read of `red` by the previous call is done
    if ((threadIdx.x & 31) == 0) red[first + (threadIdx.x >> 5)] = v;
    __syncthreads();
    float r = red[first];
    for (int i = 1; i < warps; ++i) r = MAX ? fmaxf(r, red[first + i]) : r + red[first + i];
    return r;
}

// The row of this thread and its column count (0 for the idle rows of the last block, which
// loop zero times but still join the barriers).
struct RowPos {
    fpx_u32 row, n;
    fpx_u64 base;
    __device__ __forceinline__ RowPos(fpx_u32 rows, fpx_u32 cols) {
        row = blockIdx.x * blockDim.y + threadIdx.y;
        n = row < rows ? cols : 0;
        base = (fpx_u64)row * cols;
    }
};

}  // namespace fpx
