// fpx W4A8 GEMM (ZeroQuant-FP): Y[M][N] = (X quantized to FP8 per token) · FP4 W[K][N] (+ bias),
// on FP8 tensor cores (mma.m16n8k32 e4m3/e5m2: sm_89 or newer; fpx compiles it for sm_90).
//
// Appended after fp6_gemm.cu by fpx-cuda (`w4a8::instantiate`): it reuses that file's copy
// streams (ChunkMap, ChunkStream), cp.async helpers, L2 policy, ld.global.cg and FP16 output.
// Two kernels per config:
//
// 1. QuantizeRows<FP8, K, THREADS>: one block per token row. The row's scale is the smallest
//    power of two s = 2^e with absmax / s <= max (max 448 = 1.75 * 2^8 for e4m3, 57344 =
//    1.75 * 2^15 for e5m2; absmax over the finite values; s = 1 for a row with none non-zero),
//    fpx_quant::act_fp8's definition, computed from the bits of absmax: e = E - 8 (15) plus one
//    when absmax's significand exceeds 1.75. Codes: cvt.rn.satfinite (RNE, +-inf saturates, NaN
//    stays NaN) of x * 2^-e, exact scaling. Xq is written K-permuted per 32 columns (below) and
//    zero past K, so the GEMM reads its B fragments as plain 32-bit words.
// 2. W4a8Gemm<FP8, N, K, M_TILE, WARPS, WNT, KT, STAGES, SPLIT_K>: the FP6 GEMM's pipeline
//    (grid x = token tiles, y = channel blocks, z = K splits; one cp.async per 16-byte chunk;
//    split-K finished in-kernel by the last block to arrive) over
//    W       the FP4 (e2m1) codes in the 4+2 layout with no high plane (fpx_quant::layout with
//            4 bits: 256 bytes per 16x32 tile, lane l's word of k16 half j at tile*64 + j*32 + l);
//    Xq, xs  the quantizer's output: [M][K_PAD] FP8 codes, [M] FP32 row scales;
//    scales  [N] FP32 per-channel scales with fpx_quant::fold::storage_factor (2^14) folded in,
//            as the CPU kernels take them; bias [N] FP32 or null; Y [M][N] FP16;
//    ws, counters as in fp6_gemm.cu (SPLIT_K > 1 only).
//
// The k permutation. m16n8k32 pairs A byte i of register a_h (a0/a1: h = 0, a2/a3: h = 1) of
// lane (g, t) with B byte i of register b_h of lane (g', t). The FP4 layout gives lane (g, t),
// half h, the codes of rows g and g + 8 at columns 16h + 2t + {0, 1, 8, 9}, one byte per column
// (byte 0: col 2t+8, byte 1: 2t, byte 2: 2t+9, byte 3: 2t+1; row g in the high nibble of bytes 0
// and 2 and the low nibble of bytes 1 and 3). So the MMA slot (t, h, i) stands for column
// PERM(t, h, i) = 16h + 2t + {8, 0, 9, 1}[i] of its 32-column block, and the quantizer stores
// column PERM(t, h, i) at byte 16h + 4t + i of the block: b_h is the word at byte 16h + 4t.
//
// FP4 -> FP8 without arithmetic: an e2m1 nibble s e1 e0 m0 placed as the e4m3 byte
// s 0 0 e1 e0 m0 0 0 is the code's value times 2^-6, subnormal 0.5 included (an e4m3 subnormal
// 2^-7), so the epilogue multiplies by 2^6 (times 2^-14 to undo the FP16 storage factor). Per
// lane word: L (every byte's low nibble placed) and H (every byte's high nibble), then one prmt
// per register picks each byte from L or H: 9 instructions for 16 weights.

namespace fpx {

// The activation FP8 format: 0 = e4m3, 1 = e5m2. max = 1.75 * 2^MAX_EXP.
template <int FP8>
struct Fp8Act {
    static constexpr int MAX_EXP = FP8 == 0 ? 8 : 15;
};

// Two FP32 values to FP8 codes, RNE, saturating finite values, NaN kept: `lo` in bits 0..8.
template <int FP8>
__device__ __forceinline__ fpx_u32 cvt_fp8x2(float lo, float hi) {
    fpx_u16 d;
    if (FP8 == 0) {
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
    }
    return d;
}

__device__ __forceinline__ fpx_u32 prmt(fpx_u32 a, fpx_u32 b, fpx_u32 sel) {
    fpx_u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

// The exponent e of a row's power-of-two scale from the bits of its finite absmax (see the
// header); 0 for absmax 0.
template <int FP8>
__device__ __forceinline__ int fp8_scale_exponent(fpx_u32 absmax_bits) {
    if (absmax_bits == 0u) return 0;
    const int e = (int)(absmax_bits >> 23) - 127 - Fp8Act<FP8>::MAX_EXP + ((absmax_bits & 0x7fffffu) > 0x600000u ? 1 : 0);
    return e < -126 ? -126 : e > 126 ? 126 : e;
}

// Column of 32-column block position `pos` (the inverse of the GEMM's B-fragment reads):
// pos = 16h + 4t + i holds column 16h + 2t + {8, 0, 9, 1}[i].
__device__ __forceinline__ int perm_column(int pos) {
    const int h = pos >> 4, t = (pos >> 2) & 3, i = pos & 3;
    return 16 * h + 2 * t + ((i & 1) ? 0 : 8) + (i >> 1);
}

template <int FP8, int K, int THREADS>
struct QuantizeRows {
    static constexpr int K_PAD = (K + 31) / 32 * 32;
    static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps");

    static __device__ __forceinline__ float f16_to_f32(fpx_u16 h) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }

    // X: [M][K] FP16; Xq: [M][K_PAD] codes (K-permuted, zero past K); xs: [M] scales.
    static __device__ __forceinline__ void run(const fpx_u16* __restrict__ X, unsigned char* __restrict__ Xq, float* __restrict__ xs, int M) {
        __shared__ fpx_u32 fpx_warp_max[THREADS / 32];
        const int row = blockIdx.x;
        if (row >= M) return;
        const fpx_u16* x = X + (fpx_u64)row * K;
        // absmax of the finite values, as FP16 magnitude bits (ordered like the values).
        fpx_u32 m = 0;
        for (int c = threadIdx.x; c < K; c += THREADS) {
            const fpx_u32 mag = x[c] & 0x7fffu;
            if (mag < 0x7c00u && mag > m) m = mag;
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const fpx_u32 o = __shfl_xor_sync(0xffffffffu, m, off);
            m = o > m ? o : m;
        }
        if ((threadIdx.x & 31) == 0) fpx_warp_max[threadIdx.x >> 5] = m;
        __syncthreads();
        m = 0;
#pragma unroll
        for (int w = 0; w < THREADS / 32; ++w) m = fpx_warp_max[w] > m ? fpx_warp_max[w] : m;
        const int e = fp8_scale_exponent<FP8>(__float_as_uint(f16_to_f32((fpx_u16)m)));
        const float inv = __uint_as_float((fpx_u32)(127 - e) << 23);
        if (threadIdx.x == 0) xs[row] = __uint_as_float((fpx_u32)(127 + e) << 23);
        // One 4-byte word per thread and iteration: positions 4q .. 4q + 3 of the row.
        fpx_u32* out = (fpx_u32*)(Xq + (fpx_u64)row * K_PAD);
        for (int q = threadIdx.x; q < K_PAD / 4; q += THREADS) {
            float v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = (q >> 3) * 32 + perm_column((4 * q + i) & 31);
                v[i] = c < K ? f16_to_f32(x[c]) * inv : 0.0f;
            }
            out[q] = cvt_fp8x2<FP8>(v[0], v[1]) | (cvt_fp8x2<FP8>(v[2], v[3]) << 16);
        }
    }
};

// D += A (16 x 32 e4m3 weights) x B (32 x 8 FP8 activations), FP32 accumulators.
template <int FP8>
__device__ __forceinline__ void mma_16832(float (&c)[4], const fpx_u32 (&a)[4], fpx_u32 b0, fpx_u32 b1) {
    if (FP8 == 0) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e5m2.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Registers a_h (row g) and a_h+1 (row g + 8) from a lane's FP4 word of half h (see the header).
__device__ __forceinline__ void fp4_to_e4m3(fpx_u32 w, fpx_u32& row_g, fpx_u32& row_g8) {
#if defined(FPX_PROBE) && FPX_PROBE == 1
    row_g = w;
    row_g8 = w ^ 0x01010101u;
    return;
#endif
    const fpx_u32 lo = ((w << 4) & 0x80808080u) | ((w << 2) & 0x1c1c1c1cu);
    const fpx_u32 hi = (w & 0x80808080u) | ((w >> 2) & 0x1c1c1c1cu);
    row_g = prmt(hi, lo, 0x7250u);
    row_g8 = prmt(hi, lo, 0x3614u);
}

// Multiplier of the (storage-factor-folded) channel scale: 2^6 (the placement) / 2^14.
__device__ __forceinline__ constexpr float w4a8_scale_adjust() { return 64.0f / 16384.0f; }

template <int FP8, int N, int K, int M_TILE, int WARPS, int WNT, int KT, int STAGES, int SPLIT_K>
struct W4a8Gemm {
    static constexpr int N_PAD = (N + 15) / 16 * 16;
    static constexpr int K_PAD = (K + 31) / 32 * 32;
    static constexpr int N_TILES = N_PAD / 16;
    static constexpr int K_TILES = K_PAD / 32;
    static constexpr int BLOCK_NT = WARPS * WNT;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int K_STEP = 32 * KT;
    static constexpr int X_STRIDE = K_STEP + 16;  // bytes per shared X row (+16: no bank conflicts)
    static constexpr int MB = M_TILE / 8;
    static constexpr int W_BYTES = BLOCK_NT * KT * 256;
    static constexpr int X_BYTES = M_TILE * X_STRIDE;
    static constexpr int STAGE_BYTES = W_BYTES + X_BYTES;
    static constexpr int SHARED_BYTES = STAGES * STAGE_BYTES;
    static constexpr int STEPS = (K_TILES + KT - 1) / KT;
    static constexpr bool K_TAIL = K_TILES % KT != 0;
    using WStream = ChunkStream<BLOCK_NT, KT * 16, THREADS, 16, (long long)K_TILES * 256, KT * 256, N_TILES % BLOCK_NT != 0, K_TAIL, true>;
    using XStream = ChunkStream<M_TILE, K_STEP / 16, THREADS, 2, (long long)K_PAD, X_STRIDE, true, K_TAIL, false>;

    static_assert(M_TILE == 8 || M_TILE == 16 || M_TILE == 32 || M_TILE == 64, "token tile must be 8, 16, 32 or 64");
    static_assert(KT == 1 || KT == 2 || KT == 4, "1, 2 or 4 k-tiles per stage");
    static_assert(STAGES >= 2 && STAGES <= 8, "2..8 pipeline stages");
    static_assert(SPLIT_K >= 1 && SPLIT_K <= STEPS, "1..STEPS K splits");
    static_assert(FP8 == 0 || FP8 == 1, "FP8 0 = e4m3, 1 = e5m2");

    static __device__ __forceinline__ void open_streams(WStream& wst, XStream& xst, const unsigned char* Xq, const unsigned char* W, int M,
                                                        int nt0, int m0, int step0) {
        const int kt0 = step0 * KT;
        open_tile_stream<WStream, BLOCK_NT, N_TILES, K_TILES, KT, 256>(wst, W, 0, nt0, kt0);
        open_token_stream<XStream, M_TILE, K_TILES, KT, 2, (long long)K_PAD, X_STRIDE>(xst, Xq, W_BYTES, M, m0, kt0);
    }

    static __device__ __forceinline__ void load_stage(fpx_u32 stage, WStream& wst, XStream& xst, fpx_u64 policy) {
#if !defined(FPX_PROBE) || FPX_PROBE != 2
        wst.issue(stage, policy, KT, KT * 256);
        xst.issue(stage, policy, KT, K_STEP);
#endif
    }

    static __device__ __forceinline__ void compute_stage(float (&acc)[WNT][MB][4], const unsigned char* stage) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        const fpx_u32* sw = (const fpx_u32*)stage;
        const unsigned char* sx = stage + W_BYTES;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            fpx_u32 b[MB][2];
#pragma unroll
            for (int mb = 0; mb < MB; ++mb) {
                const unsigned char* p = sx + (mb * 8 + g) * X_STRIDE + kt * 32 + 4 * t;
                b[mb][0] = *(const fpx_u32*)p;
                b[mb][1] = *(const fpx_u32*)(p + 16);
            }
#pragma unroll
            for (int i = 0; i < WNT; ++i) {
                const int tile = (warp * WNT + i) * KT + kt;
                fpx_u32 a[4];
                fp4_to_e4m3(sw[tile * 64 + lane], a[0], a[1]);
                fp4_to_e4m3(sw[tile * 64 + 32 + lane], a[2], a[3]);
#pragma unroll
                for (int mb = 0; mb < MB; ++mb) mma_16832<FP8>(acc[i][mb], a, b[mb][0], b[mb][1]);
            }
        }
    }

    static __device__ __forceinline__ void run(const unsigned char* __restrict__ Xq, const float* __restrict__ xscale,
                                               const unsigned char* __restrict__ W, const float* __restrict__ scales,
                                               const float* __restrict__ bias, fpx_u16* __restrict__ Y, float* __restrict__ ws,
                                               unsigned* __restrict__ counters, int M) {
        extern __shared__ __align__(16) unsigned char fpx_smem[];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        const int m0 = blockIdx.x * M_TILE;
        const int nt0 = blockIdx.y * BLOCK_NT;
        const SplitSteps<STEPS, SPLIT_K> steps(blockIdx.z);
        const fpx_u64 policy = weight_policy(gridDim.x == 1);
        WStream wst;
        XStream xst;
        open_streams(wst, xst, Xq, W, M, nt0, m0, steps.begin);

        float acc[WNT][MB][4];
#pragma unroll
        for (int i = 0; i < WNT; ++i)
#pragma unroll
            for (int mb = 0; mb < MB; ++mb)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][mb][q] = 0.0f;

        k_pipeline<STAGES, STAGE_BYTES>(
            steps.count, smem_addr(fpx_smem), fpx_smem, [&](fpx_u32 stage) { load_stage(stage, wst, xst, policy); },
            [&](const unsigned char* stage) { compute_stage(acc, stage); });

        // Epilogue. Accumulator (i, mb): c0,c1 = channel g, tokens 2t, 2t+1; c2,c3 = channel g+8.
#pragma unroll
        for (int i = 0; i < WNT; ++i) {
#pragma unroll
            for (int hrow = 0; hrow < 2; ++hrow) {
                const int ch = (nt0 + warp * WNT + i) * 16 + g + 8 * hrow;
                if (ch >= N) continue;
                const float sc = SPLIT_K == 1 ? scales[ch] * w4a8_scale_adjust() : 0.0f;
                const float bi = SPLIT_K == 1 && bias ? bias[ch] : 0.0f;
#pragma unroll
                for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const int tok = m0 + mb * 8 + 2 * t + q;
                        if (tok >= M) continue;
                        const float v = acc[i][mb][2 * hrow + q];
                        if (SPLIT_K == 1) {
                            Y[(fpx_u64)tok * N + ch] = from_f32<0>(v * xscale[tok] * sc + bi);
                        } else {
                            ws[((fpx_u64)blockIdx.z * M + tok) * N + ch] = v;
                        }
                    }
                }
            }
        }
        if (SPLIT_K > 1) finish_split(xscale, scales, bias, Y, ws, counters, M, nt0, m0);
    }

    // Split-K: as fp6_gemm.cu's Gemm::finish_split, with the token's scale.
    static __device__ __forceinline__ void finish_split(const float* __restrict__ xscale, const float* __restrict__ scales,
                                                        const float* __restrict__ bias, fpx_u16* __restrict__ Y, const float* ws,
                                                        unsigned* counters, int M, int nt0, int m0) {
        if (!last_split_arrived<SPLIT_K>(counters)) return;
        constexpr int BLOCK_N = BLOCK_NT * 16;
        for (int idx = threadIdx.x; idx < M_TILE * BLOCK_N; idx += THREADS) {
            const int tok = m0 + idx / BLOCK_N, ch = nt0 * 16 + idx % BLOCK_N;
            if (tok >= M || ch >= N) continue;
            float s = 0.0f;
#pragma unroll
            for (int z = 0; z < SPLIT_K; ++z) s += load_cg(ws + ((fpx_u64)z * M + tok) * N + ch);
            Y[(fpx_u64)tok * N + ch] = from_f32<0>(s * xscale[tok] * (scales[ch] * w4a8_scale_adjust()) + (bias ? bias[ch] : 0.0f));
        }
    }
};

}  // namespace fpx
