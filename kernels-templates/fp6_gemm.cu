// fpx FP6 weight-only GEMM: Y[M][N] = X[M][K] · dequant(W)[K][N] (+ bias), for NVRTC.
//
// Header-free on purpose (NVRTC ships no cuda_fp16.h / <cstdint>): own typedefs, halves as raw
// `unsigned short` bits, tensor cores and async copies through inline PTX. Needs sm_80 or newer.
//
// This file holds templates only. fpx-cuda (crates/fpx-cuda, `instantiate`) appends one
// `extern "C" __global__` wrapper per GEMM config, named after the config, plus a reduction
// kernel `<name>_reduce` when SPLIT_K > 1.
//
// Operands (all device pointers, row-major):
//   X       [M][K_PAD] FP16 (ACT = 0) or BF16 (ACT = 1) activations; columns K..K_PAD must be
//           zero (K_PAD = K rounded up to 32; the padding weight codes are zero too).
//   W       the packed 4+2 planes of fpx_quant::layout for the [N][K] code matrix: low plane
//           (256 bytes per 16x32 tile, tiles n-tile major), then high plane (128 bytes per tile).
//   scales  [N] FP32 per-output-channel scales, with fpx_quant::fold::storage_factor (the FP16
//           bias-shift factor 2^12 / 2^14) folded in, exactly as the CPU kernels take them.
//   bias    [N] FP32 or null.
//   Y       [M][N] FP16/BF16 output (only rows < M and channels < N are written).
//   ws      SPLIT_K > 1 only: FP32 workspace [SPLIT_K][M][N]; every split writes its whole
//           slice (zeros for an empty split), so it needs no zeroing; `<name>_reduce` then
//           sums the splits in a fixed order (deterministic), applies scale and bias and
//           writes Y. SPLIT_K == 1: ws is unused (may be null) and the GEMM kernel writes Y.
//
// Mapping: weights are the A operand of mma.sync.aligned.m16n8k16.row.col (MMA M = 16 output
// channels = one layout tile row block), tokens the B operand (MMA N = 8 tokens). A block has
// WARPS warps; warp w owns WNT consecutive n-tiles (16 channels each) and all M_TILE tokens of
// the block. A pipeline stage holds KT k-tiles (32 K each) of the block's weights (both planes,
// copied verbatim with 16-byte cp.async, evict-first L2 hint: each weight is read once) and the
// matching M_TILE x 32*KT slice of X (rows >= M and columns >= K_PAD zero-filled by cp.async's
// src-size operand). Grid: x = n-tile blocks, y = token tiles, z = K splits.
//
// Dequantization mirrors fpx_quant::layout::fp6_pair_to_f16x2 exactly: per lane one low-plane
// word per k16 half and one high-plane word per tile; (low << 2 | >> 2 | << 6 | << 10) &
// 0x3c003c00 gives the 4 low bits of a pair, (high << 2*(4*half + pair)) & 0xc000c000 the two
// top bits; then the bias shift (x & 0x80008000) | ((x & 0x7c007c00) >> (FORMAT ? 3 : 2)).
// BF16 (ACT = 1) uses fpx_quant::bias_shift::bf16_offset_bits instead (true magnitude, no BF16
// subnormals, which tensor cores flush): exponent re-biased, subnormal codes built as a normal
// minus +-2^(1-bias) with one exact fma.rn.bf16x2; its factor is 1, so the epilogue multiplies
// the folded scale by 1/f16_factor (an exact power of two).

typedef unsigned int fpx_u32;
typedef unsigned short fpx_u16;
typedef unsigned long long fpx_u64;

namespace fpx {

__device__ __forceinline__ fpx_u32 smem_addr(const void* p) {
    fpx_u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ fpx_u64 evict_first_policy() {
    fpx_u64 p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    return p;
}

// 16-byte async copy global -> shared; src_bytes 0 zero-fills (src must still be a valid address).
__device__ __forceinline__ void cp_async16_hint(fpx_u32 dst, const void* src, fpx_u32 src_bytes, fpx_u64 policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;" ::"r"(dst), "l"(src), "r"(src_bytes), "l"(policy)
                 : "memory");
}

__device__ __forceinline__ void cp_async16(fpx_u32 dst, const void* src, fpx_u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

template <int ACT>
__device__ __forceinline__ void mma_16816(float (&c)[4], const fpx_u32 (&a)[4], fpx_u32 b0, fpx_u32 b1) {
    if (ACT == 0) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two 6-bit codes of fragment pair `PAIR` of k16 half `HALF`, at bits 10..16 of each 16-bit half.
template <int HALF, int PAIR>
__device__ __forceinline__ fpx_u32 fp6_pair_bits(fpx_u32 low, fpx_u32 high) {
    fpx_u32 lo = PAIR == 0 ? (low << 2) : PAIR == 1 ? (low >> 2) : PAIR == 2 ? (low << 6) : (low << 10);
    return (lo & 0x3c003c00u) | ((high << (2 * (4 * HALF + PAIR))) & 0xc000c000u);
}

// FORMAT 0 = fp6 e3m2 (bias 3, 2 mantissa bits), 1 = fp6 e2m3 (bias 1, 3 mantissa bits).
template <int FORMAT, int ACT>
__device__ __forceinline__ fpx_u32 fp6_to_x2(fpx_u32 x) {
    if (ACT == 0) {
        // fpx_quant::bias_shift::f16_bits, two at a time.
        return (x & 0x80008000u) | ((x & 0x7c007c00u) >> (FORMAT == 0 ? 2 : 3));
    } else {
        // fpx_quant::bias_shift::bf16_offset_bits, two at a time.
        const int MBITS = FORMAT == 0 ? 2 : 3;
        const fpx_u32 BIAS = FORMAT == 0 ? 3u : 1u;
        const fpx_u32 NORM = ((127u - BIAS) << 7) * 0x10001u;  // exponent offset for normal codes
        const fpx_u32 ONE = ((128u - BIAS) << 7) * 0x10001u;   // 2^(1-bias): subnormal codes' exponent
        const fpx_u32 EXPM = FORMAT == 0 ? 0x70007000u : 0x60006000u;
        fpx_u32 sign = x & 0x80008000u;
        fpx_u32 mag = (x & 0x7c007c00u) >> (3 + MBITS);  // (exp, mant) at bits 7-MBITS.. of each half
        fpx_u32 e = x & EXPM;
        fpx_u32 sub = ((e & 0xffffu) == 0 ? 0x0000ffffu : 0u) | ((e >> 16) == 0 ? 0xffff0000u : 0u);
        fpx_u32 w = sign | (mag + ((ONE & sub) | (NORM & ~sub)));  // no carry between halves
        fpx_u32 s = sub & (sign | ONE);                             // +-2^(1-bias) for e == 0, else +0
        fpx_u32 d;
        // d = w - s exactly (the difference is a BF16 normal or zero).
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(s), "r"(0xbf80bf80u), "r"(w));
        return d;
    }
}

template <int ACT>
__device__ __forceinline__ fpx_u16 from_f32(float v) {
    fpx_u16 h;
    if (ACT == 0) {
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    } else {
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    }
    return h;
}

// Multiplier applied to the (storage-factor-folded) scale in the epilogue: 1 for FP16; for
// BF16 the offset path has factor 1, so undo the folded FP16 factor (2^12 e3m2, 2^14 e2m3).
template <int FORMAT, int ACT>
__device__ __forceinline__ float scale_adjust() {
    return ACT == 0 ? 1.0f : (FORMAT == 0 ? 1.0f / 4096.0f : 1.0f / 16384.0f);
}

template <int FORMAT, int ACT, int N, int K, int M_TILE, int WARPS, int WNT, int KT, int STAGES, int SPLIT_K>
struct Gemm {
    static constexpr int N_PAD = (N + 15) / 16 * 16;
    static constexpr int K_PAD = (K + 31) / 32 * 32;
    static constexpr int N_TILES = N_PAD / 16;
    static constexpr int K_TILES = K_PAD / 32;
    static constexpr int BLOCK_NT = WARPS * WNT;   // n-tiles per block
    static constexpr int THREADS = WARPS * 32;
    static constexpr int K_STEP = 32 * KT;         // K per pipeline stage
    static constexpr int X_STRIDE = K_STEP + 8;    // halves per shared X row (+8: no bank conflicts)
    static constexpr int MB = M_TILE / 8;          // MMA token blocks
    static constexpr int W_LOW_BYTES = BLOCK_NT * KT * 256;
    static constexpr int W_HIGH_BYTES = BLOCK_NT * KT * 128;
    static constexpr int X_BYTES = M_TILE * X_STRIDE * 2;
    static constexpr int STAGE_BYTES = W_LOW_BYTES + W_HIGH_BYTES + X_BYTES;
    static constexpr int SHARED_BYTES = STAGES * STAGE_BYTES;
    static constexpr fpx_u64 LOW_PLANE_BYTES = (fpx_u64)N_TILES * K_TILES * 256;
    static constexpr int STEPS = (K_TILES + KT - 1) / KT;
    static constexpr int STEPS_PER_SPLIT = (STEPS + SPLIT_K - 1) / SPLIT_K;

    static_assert(M_TILE == 8 || M_TILE == 16 || M_TILE == 32 || M_TILE == 64, "token tile must be 8, 16, 32 or 64");
    static_assert(STAGES >= 2 && STAGES <= 8, "2..8 pipeline stages");
    static_assert(SPLIT_K >= 1, "SPLIT_K >= 1");
    static_assert(FORMAT == 0 || FORMAT == 1, "FORMAT 0 = e3m2, 1 = e2m3");
    static_assert(ACT == 0 || ACT == 1, "ACT 0 = fp16, 1 = bf16");

    // Issue the cp.asyncs of pipeline step `step` into stage buffer `slot`.
    static __device__ __forceinline__ void load_stage(fpx_u32 sbase, int slot, int step, const fpx_u16* X, const unsigned char* W, int M,
                                                      int nt0, int m0, fpx_u64 policy) {
        const int tid = threadIdx.x;
        const int kt0 = step * KT;
        const fpx_u32 dst0 = sbase + slot * STAGE_BYTES;
        // Low plane: per n-tile, KT consecutive k-tiles are contiguous (KT * 16 chunks).
#pragma unroll
        for (int c = tid; c < BLOCK_NT * KT * 16; c += THREADS) {
            const int i = c / (KT * 16), r = c % (KT * 16), kt = r / 16;
            const int nt = nt0 + i;
            const bool ok = nt < N_TILES && kt0 + kt < K_TILES;
            const unsigned char* src = ok ? W + ((fpx_u64)nt * K_TILES + kt0 + kt) * 256 + (r % 16) * 16 : W;
            cp_async16_hint(dst0 + c * 16, src, ok ? 16 : 0, policy);
        }
        // High plane: 128 bytes per tile (KT * 8 chunks per n-tile).
#pragma unroll
        for (int c = tid; c < BLOCK_NT * KT * 8; c += THREADS) {
            const int i = c / (KT * 8), r = c % (KT * 8), kt = r / 8;
            const int nt = nt0 + i;
            const bool ok = nt < N_TILES && kt0 + kt < K_TILES;
            const unsigned char* src = ok ? W + LOW_PLANE_BYTES + ((fpx_u64)nt * K_TILES + kt0 + kt) * 128 + (r % 8) * 16 : W;
            cp_async16_hint(dst0 + W_LOW_BYTES + c * 16, src, ok ? 16 : 0, policy);
        }
        // Activations: M_TILE rows x K_STEP halves, 8 halves per chunk.
#pragma unroll
        for (int c = tid; c < M_TILE * (K_STEP / 8); c += THREADS) {
            const int row = c / (K_STEP / 8), col = (c % (K_STEP / 8)) * 8;
            const int gm = m0 + row, gk = kt0 * 32 + col;
            const bool ok = gm < M && gk < K_PAD;
            const fpx_u16* src = ok ? X + (fpx_u64)gm * K_PAD + gk : X;
            cp_async16(dst0 + W_LOW_BYTES + W_HIGH_BYTES + (row * X_STRIDE + col) * 2, src, ok ? 16 : 0);
        }
    }

    template <int HALF>
    static __device__ __forceinline__ void mma_half(float (&acc)[WNT][MB][4], const fpx_u32 (&lw)[WNT][2], const fpx_u32 (&hw)[WNT],
                                                    const fpx_u16* sx) {
        const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        fpx_u32 b[MB][2];
#pragma unroll
        for (int mb = 0; mb < MB; ++mb) {
            const fpx_u16* p = sx + (mb * 8 + g) * X_STRIDE + HALF * 16 + 2 * t;
            b[mb][0] = *(const fpx_u32*)p;
            b[mb][1] = *(const fpx_u32*)(p + 8);
        }
#pragma unroll
        for (int i = 0; i < WNT; ++i) {
            fpx_u32 a[4];
            a[0] = fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, 0>(lw[i][HALF], hw[i]));
            a[1] = fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, 1>(lw[i][HALF], hw[i]));
            a[2] = fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, 2>(lw[i][HALF], hw[i]));
            a[3] = fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, 3>(lw[i][HALF], hw[i]));
#pragma unroll
            for (int mb = 0; mb < MB; ++mb) mma_16816<ACT>(acc[i][mb], a, b[mb][0], b[mb][1]);
        }
    }

    static __device__ __forceinline__ void compute_stage(float (&acc)[WNT][MB][4], const unsigned char* stage) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const fpx_u32* slow = (const fpx_u32*)stage;
        const fpx_u32* shigh = (const fpx_u32*)(stage + W_LOW_BYTES);
        const fpx_u16* sx = (const fpx_u16*)(stage + W_LOW_BYTES + W_HIGH_BYTES);
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            fpx_u32 lw[WNT][2], hw[WNT];
#pragma unroll
            for (int i = 0; i < WNT; ++i) {
                const int tile = (warp * WNT + i) * KT + kt;
                lw[i][0] = slow[tile * 64 + lane];
                lw[i][1] = slow[tile * 64 + 32 + lane];
                hw[i] = shigh[tile * 32 + lane];
            }
            mma_half<0>(acc, lw, hw, sx + kt * 32);
            mma_half<1>(acc, lw, hw, sx + kt * 32);
        }
    }

    static __device__ __forceinline__ void run(const fpx_u16* __restrict__ X, const unsigned char* __restrict__ W,
                                               const float* __restrict__ scales, const float* __restrict__ bias, fpx_u16* __restrict__ Y,
                                               float* __restrict__ ws, int M) {
        extern __shared__ __align__(16) unsigned char fpx_smem[];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        const int nt0 = blockIdx.x * BLOCK_NT;
        const int m0 = blockIdx.y * M_TILE;
        const int step_begin = blockIdx.z * STEPS_PER_SPLIT;
        const int step_end = step_begin + STEPS_PER_SPLIT < STEPS ? step_begin + STEPS_PER_SPLIT : STEPS;
        const int nsteps = step_end > step_begin ? step_end - step_begin : 0;
        const fpx_u64 policy = evict_first_policy();
        const fpx_u32 sbase = smem_addr(fpx_smem);

        float acc[WNT][MB][4];
#pragma unroll
        for (int i = 0; i < WNT; ++i)
#pragma unroll
            for (int mb = 0; mb < MB; ++mb)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][mb][q] = 0.0f;

#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < nsteps) load_stage(sbase, s, step_begin + s, X, W, M, nt0, m0, policy);
            cp_async_commit();
        }
        for (int it = 0; it < nsteps; ++it) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            // The slot refilled here was consumed in iteration it - 1, which every thread has
            // finished (the barrier above).
            const int next = it + STAGES - 1;
            if (next < nsteps) load_stage(sbase, next % STAGES, step_begin + next, X, W, M, nt0, m0, policy);
            cp_async_commit();
            compute_stage(acc, fpx_smem + (it % STAGES) * STAGE_BYTES);
        }
        cp_async_wait<0>();

        // Epilogue. Accumulator (i, mb): c0,c1 = channel g, tokens 2t, 2t+1; c2,c3 = channel g+8.
        const float adj = scale_adjust<FORMAT, ACT>();
#pragma unroll
        for (int i = 0; i < WNT; ++i) {
#pragma unroll
            for (int hrow = 0; hrow < 2; ++hrow) {
                const int ch = (nt0 + warp * WNT + i) * 16 + g + 8 * hrow;
                if (ch >= N) continue;
                const float sc = SPLIT_K == 1 ? scales[ch] * adj : 0.0f;
                const float bi = SPLIT_K == 1 && bias ? bias[ch] : 0.0f;
#pragma unroll
                for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const int tok = m0 + mb * 8 + 2 * t + q;
                        if (tok >= M) continue;
                        const float v = acc[i][mb][2 * hrow + q];
                        if (SPLIT_K == 1) {
                            Y[(fpx_u64)tok * N + ch] = from_f32<ACT>(v * sc + bi);
                        } else {
                            ws[((fpx_u64)blockIdx.z * M + tok) * N + ch] = v;
                        }
                    }
                }
            }
        }
    }
};

// Split-K reduction: Y[m][n] = (sum over splits of ws[z][m][n]) * scale[n] + bias[n], splits
// summed in order 0..SPLIT_K (deterministic). One thread per output element, grid-stride.
template <int FORMAT, int ACT, int N, int SPLIT_K>
__device__ __forceinline__ void gemm_reduce(const float* __restrict__ ws, const float* __restrict__ scales, const float* __restrict__ bias,
                                            fpx_u16* __restrict__ Y, int M) {
    const fpx_u64 total = (fpx_u64)M * N;
    const float adj = scale_adjust<FORMAT, ACT>();
    for (fpx_u64 idx = (fpx_u64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (fpx_u64)gridDim.x * blockDim.x) {
        const int ch = (int)(idx % N);
        float s = 0.0f;
#pragma unroll
        for (int z = 0; z < SPLIT_K; ++z) s += ws[(fpx_u64)z * total + idx];
        Y[idx] = from_f32<ACT>(s * (scales[ch] * adj) + (bias ? bias[ch] : 0.0f));
    }
}

}  // namespace fpx
