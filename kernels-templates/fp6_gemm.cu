// fpx FP6 weight-only GEMM: Y[M][N] = X[M][K] · dequant(W)[K][N] (+ bias), for NVRTC.
//
// Header-free on purpose (NVRTC ships no cuda_fp16.h / <cstdint>): own typedefs, halves as raw
// `unsigned short` bits, tensor cores and async copies through inline PTX. Needs sm_80 or newer.
//
// This file holds templates only. fpx-cuda (crates/fpx-cuda, `instantiate`) appends one
// `extern "C" __global__` wrapper per GEMM config, named after the config.
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
//   ws      SPLIT_K > 1 only: FP32 partial sums [SPLIT_K][M][N]; every split writes its block's
//           slice, so it needs no zeroing.
//   counters SPLIT_K > 1 only: one u32 per output block (gridDim.x * gridDim.y), zero before
//           the first launch. Each split block counts itself in after writing its partials; the
//           last of a block's SPLIT_K to arrive sums the splits in the fixed order 0..SPLIT_K
//           (deterministic), applies scale and bias, writes Y and sets the counter back to zero,
//           so every launch leaves the counters as it found them. One launch, no reduce kernel.
//           SPLIT_K == 1: ws and counters are unused (may be null) and the GEMM writes Y.
//
// Mapping: weights are the A operand of mma.sync.aligned.m16n8k16.row.col (MMA M = 16 output
// channels = one layout tile row block), tokens the B operand (MMA N = 8 tokens). A block has
// WARPS warps; warp w owns WNT consecutive n-tiles (16 channels each) and all M_TILE tokens of
// the block. A pipeline stage holds KT k-tiles (32 K each) of the block's weights (both planes,
// copied verbatim with 16-byte cp.async; L2 evict-first when a single token tile reads each
// weight once) and the matching M_TILE x 32*KT slice of X (rows >= M and columns >= K_PAD
// zero-filled by cp.async's src-size operand). Each thread's copies form three ChunkStreams
// whose per-chunk offsets are compile-time constants from one per-thread pointer, so a copy is
// one cp.async plus its guards (fpx_cuda::sass counts them). Grid: x = token tiles (fastest, so
// blocks sharing weights run together), y = n-tile blocks, z = K splits; split z runs
// STEPS / SPLIT_K steps, one more for the first STEPS % SPLIT_K splits.
//
// Dequantization mirrors fpx_quant::layout::fp6_pair_to_f16x2 exactly: per lane one low-plane
// word per k16 half and one high-plane word per tile; (low << 2 | >> 2 | << 6 | << 10) &
// 0x3c003c00 gives the 4 low bits of a pair, (high << 2*(4*half + pair)) & 0xc000c000 the two
// top bits; then the bias shift (x & 0x80008000) | ((x & 0x7c007c00) >> (FORMAT ? 3 : 2)).
// BF16 (ACT = 1) shifts into the BF16 fields instead (fpx_quant::bias_shift::bf16_bits) and
// multiplies by 2^(127 - bias) with one exact fma.rn.bf16x2 (bias_shift::bf16_factor): true
// magnitude, no BF16 subnormals for the tensor cores to flush; its factor is 1, so the epilogue
// multiplies the folded scale by 1/f16_factor (an exact power of two).

typedef unsigned int fpx_u32;
typedef unsigned short fpx_u16;
typedef unsigned long long fpx_u64;

namespace fpx {

__device__ __forceinline__ fpx_u32 smem_addr(const void* p) {
    fpx_u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// L2 policy of the weight copies: evict-first when one token tile reads each weight once;
// normal when several token tiles (adjacent blocks, run together) read the same weights.
__device__ __forceinline__ fpx_u64 weight_policy(bool read_once) {
    fpx_u64 p;
    if (read_once) {
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    } else {
        asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
    }
    return p;
}

// 16-byte async copy global -> shared; src_bytes 0 zero-fills the 16 bytes and reads nothing.
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

// A float from L2 (ld.global.cg): another block's split-K partial sum, never a stale L1 line.
__device__ __forceinline__ float load_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

// Split-K arrival: after every thread of the block wrote its partials, the block counts itself
// in on its output block's counter; true (for the whole block) in the last of the SPLIT_K
// blocks to arrive, which resets the counter for the next launch and may then read every
// split's partials (ld.global.cg).
template <int SPLIT_K>
__device__ __forceinline__ bool last_split_arrived(unsigned* counters) {
    __shared__ unsigned fpx_last_split;
    __threadfence();  // this thread's partials are visible GPU-wide before the block counts itself in
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned* counter = counters + blockIdx.y * gridDim.x + blockIdx.x;
        const unsigned arrived = atomicAdd(counter, 1u);
        fpx_last_split = arrived == SPLIT_K - 1 ? 1u : 0u;
        if (arrived == SPLIT_K - 1) *counter = 0u;  // every split is in: ready for the next launch
    }
    __syncthreads();
    if (fpx_last_split == 0u) return false;
    __threadfence();  // the other splits' partials, counted in before the atomic, are read after it
    return true;
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
// FP16 (ACT 0): fpx_quant::bias_shift::f16_bits, two at a time: sign kept, exponent and mantissa
// moved down so the exponent lands in the low bits of the FP16 exponent field; the value is the
// code's times 2^(15 - bias) (the "bias shift", folded into the scales), subnormal codes
// included (FP16 subnormals, which tensor cores take).
// BF16 (ACT 1): the same placement in the BF16 fields (value: the code's times 2^(bias - 127),
// a BF16 subnormal for e = 0 codes, which tensor cores would flush), then one exact
// fma.rn.bf16x2 by 2^(127 - bias) (plus -0, keeping the sign of zeros): true magnitude, every
// result a BF16 normal or zero. fma.bf16x2 keeps subnormal inputs (PTX: it has no .ftz form).
template <int FORMAT, int ACT>
__device__ __forceinline__ fpx_u32 fp6_to_x2(fpx_u32 x) {
    const int SHIFT = ACT == 0 ? (FORMAT == 0 ? 2 : 3) : (FORMAT == 0 ? 5 : 6);
    const fpx_u32 placed = (x & 0x80008000u) | ((x & 0x7c007c00u) >> SHIFT);
    if (ACT == 0) {
        return placed;
    } else {
        const fpx_u32 REBIAS = (FORMAT == 0 ? 251u : 253u) << 7;  // BF16 2^(127 - bias): exponent 127 + 124 / 126
        fpx_u32 d;
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(placed), "r"(REBIAS * 0x10001u), "r"(0x80008000u));
        return d;
    }
}

// x rotated left by N bits (0 <= N < 32; one SHF.L.W).
template <int N>
__device__ __forceinline__ fpx_u32 rotl(fpx_u32 x) {
    return N == 0 ? x : (x << (N & 31)) | (x >> ((32 - N) & 31));
}

// Whether the fast e3m2 FP16 path applies: its two top code bits (sign, e2) must land 3 bits
// apart (15 and 12), which one rotated word holds for all 8 pairs of a tile; e2m3 (15 and 11)
// and BF16 (15 and 9) would collide with the next pairs' bits, so they use the shift path.
template <int FORMAT, int ACT>
struct RotatedHigh {
    static constexpr bool ON = FORMAT == 0 && ACT == 0;
};

// A lane's high-plane word as the dequantization takes it. Fast e3m2 FP16 path: pair q's sign
// sits at bit 15 - 2q (31 - 2q for the second weight) and its e2 bit just below; the e2 bits
// move two places down, rotating, so rotating the word left by 2q puts the sign at 15 (31) and
// e2 at 12 (28), where FP16 wants them. 3 instructions per tile, for 8 registers.
template <int FORMAT, int ACT>
__device__ __forceinline__ fpx_u32 prepare_high(fpx_u32 high) {
#if defined(FPX_PROBE) && FPX_PROBE == 1
    return high;
#endif
    if (RotatedHigh<FORMAT, ACT>::ON) {
        const fpx_u32 e2 = high & 0x55555555u;
        return (high & 0xaaaaaaaau) | (e2 >> 2) | (e2 << 30);
    }
    return high;
}

// Fragment register PAIR of k16 half HALF (two weights) from a lane's low-plane word and its
// prepared high-plane word. Fast e3m2 FP16 path: the low nibbles (e1 e0 m1 m0) shifted to bits
// 11..8 (27..24), sign and e2 from the rotated high word: fpx_quant::bias_shift::f16_bits in
// 2-4 instructions. Otherwise the shift path (fp6_pair_bits + fp6_to_x2).
// Probe build FPX_PROBE=1 (SASS cost accounting only, never launched): no dequantization, just
// four distinct values from both words at 3 instructions per 4 registers (fpx_cuda::sass adds
// those back), so liveness and shared loads stay as shipped.
template <int FORMAT, int ACT, int HALF, int PAIR>
__device__ __forceinline__ fpx_u32 dequant_pair(fpx_u32 low, fpx_u32 high) {
#if defined(FPX_PROBE) && FPX_PROBE == 1
    return ((PAIR & 1) ? high : low) ^ (PAIR * 0x01010101u);
#else
    if (RotatedHigh<FORMAT, ACT>::ON) {
        const fpx_u32 nibbles = PAIR == 0 ? low : PAIR == 1 ? (low >> 4) : PAIR == 2 ? (low << 4) : (low << 8);
        return (rotl<2 * (4 * HALF + PAIR)>(high) & 0x90009000u) | (nibbles & 0x0f000f00u);
    }
    return fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, PAIR>(low, high));
#endif
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
// BF16 the dequantized weights have their true magnitude (factor 1), so undo the folded FP16
// factor (2^12 e3m2, 2^14 e2m3).
template <int FORMAT, int ACT>
__device__ __forceinline__ float scale_adjust() {
    return ACT == 0 ? 1.0f : (FORMAT == 0 ? 1.0f / 4096.0f : 1.0f / 16384.0f);
}

// A thread's share of one operand's slice of a pipeline stage: ROWS rows of ROW 16-byte chunks,
// chunk c = tid + j * THREADS (j = 0..ITERS) at row c / ROW, column c % ROW. THREADS and ROW
// divide one another, so relative to the thread's first chunk (tid / ROW, tid % ROW) chunk j
// sits row_add(j) rows and col_add(j) columns on: compile-time constants once the copy loop is
// unrolled, which leaves one cp.async (and its guards) per chunk.
template <int ROWS, int ROW, int THREADS>
struct ChunkMap {
    static_assert(THREADS % ROW == 0 || ROW % THREADS == 0, "threads per block and chunks per row must divide one another");
    static constexpr int ITERS = (ROWS * ROW + THREADS - 1) / THREADS;
    static constexpr bool EVEN = (ROWS * ROW) % THREADS == 0;  // no thread runs past the last row
    static constexpr int ROWS_PER_ITER = THREADS >= ROW ? THREADS / ROW : 1;
    static constexpr int ITERS_PER_ROW = ROW > THREADS ? ROW / THREADS : 1;
    static __device__ __forceinline__ constexpr int row_add(int j) { return THREADS >= ROW ? j * ROWS_PER_ITER : j / ITERS_PER_ROW; }
    static __device__ __forceinline__ constexpr int col_add(int j) { return THREADS >= ROW ? 0 : (j % ITERS_PER_ROW) * THREADS; }
};

// One operand's cp.async stream for one thread: `src` points at the thread's first chunk of the
// next stage to load and advances by `step_bytes` per stage; bit j of `in_rows` says whether
// chunk j lies in the stage slice at all (row < ROWS; only a thread past the last row has a
// zero bit, only when !EVEN) and bit j of `rows_ok` whether its row exists in the matrix
// (n-tile < N_TILES, token < M; zero-filled otherwise), both fixed for the whole K loop;
// `k_left` counts the k-tiles left from the thread's first column, for the K tail (K_GUARD:
// the last stage is short). CPT: chunks per k-tile along a row. GROW: global bytes between
// rows; SROW: stage bytes between rows.
template <int ROWS, int ROW, int THREADS, int CPT, long long GROW, int SROW, bool ROW_GUARD, bool K_GUARD, bool HINT>
struct ChunkStream {
    using Map = ChunkMap<ROWS, ROW, THREADS>;
    const unsigned char* src;
    fpx_u32 dst;
    fpx_u32 in_rows;
    fpx_u32 rows_ok;
    int k_left;

    // Queues this thread's chunks of one stage into the stage at shared address `stage`;
    // chunks outside the matrix are zero-filled (src-size 0).
    __device__ __forceinline__ void issue(fpx_u32 stage, fpx_u64 policy, int kt_per_stage, long long step_bytes) {
#pragma unroll
        for (int j = 0; j < Map::ITERS; ++j) {
            if (!Map::EVEN && !((in_rows >> j) & 1u)) continue;
            bool ok = true;
            if (ROW_GUARD) ok = (rows_ok >> j) & 1u;
            if (K_GUARD) ok = ok && Map::col_add(j) / CPT < k_left;
            // With src-size 0 nothing is read, so `p` may point past the matrix (as CUTLASS's
            // zero-fill copies do); no select keeps it in bounds.
            const unsigned char* p = src + (long long)Map::row_add(j) * GROW + Map::col_add(j) * 16;
            const fpx_u32 d = stage + dst + Map::row_add(j) * SROW + Map::col_add(j) * 16;
            if (HINT) {
                cp_async16_hint(d, p, ok ? 16 : 0, policy);
            } else {
                cp_async16(d, p, ok ? 16 : 0);
            }
        }
        src += step_bytes;
        k_left -= kt_per_stage;
    }
};

// Opens stream `s` (a ChunkStream over BLOCK_NT tile rows) on a weight plane of TILE_BYTES per
// 16x32 tile (tiles n-tile major, K_TILES per n-tile): this thread's first chunk of the block's
// n-tiles nt0.. at k-tile kt0, its stage slice at shared offset dst0. The row guards (n-tiles
// past N_TILES: zero-filled) are worked out here, once.
template <typename S, int BLOCK_NT, int N_TILES, int K_TILES, int KT, int TILE_BYTES>
__device__ __forceinline__ void open_tile_stream(S& s, const unsigned char* plane, fpx_u32 dst0, int nt0, int kt0) {
    constexpr int CPT = TILE_BYTES / 16;  // 16-byte chunks per tile
    const fpx_u32 tid = threadIdx.x;
    const fpx_u32 row0 = tid / (KT * CPT), col0 = tid % (KT * CPT);
    s.src = plane + ((fpx_u64)(nt0 + row0) * K_TILES + kt0) * TILE_BYTES + col0 * 16;
    s.dst = dst0 + tid * 16;
    s.k_left = K_TILES - kt0 - (int)(col0 / CPT);
    s.in_rows = 0;
    s.rows_ok = 0;
#pragma unroll
    for (int j = 0; j < S::Map::ITERS; ++j) {
        const int row = (int)row0 + S::Map::row_add(j);
        s.in_rows |= (fpx_u32)(row < BLOCK_NT) << j;
        s.rows_ok |= (fpx_u32)(nt0 + row < N_TILES) << j;
    }
}

// Opens stream `s` (a ChunkStream over M_TILE token rows) on activations of ROW_BYTES global
// bytes per row and CPT 16-byte chunks per k-tile: this thread's first chunk of tokens m0.. at
// k-tile kt0, the stage's rows SROW bytes apart from shared offset dst0. Tokens past M are
// zero-filled.
template <typename S, int M_TILE, int K_TILES, int KT, int CPT, long long ROW_BYTES, int SROW>
__device__ __forceinline__ void open_token_stream(S& s, const unsigned char* x, fpx_u32 dst0, int M, int m0, int kt0) {
    const fpx_u32 tid = threadIdx.x;
    const fpx_u32 row0 = tid / (KT * CPT), col0 = tid % (KT * CPT);
    s.src = x + (fpx_u64)(m0 + row0) * ROW_BYTES + kt0 * (CPT * 16) + col0 * 16;
    s.dst = dst0 + row0 * SROW + col0 * 16;
    s.k_left = K_TILES - kt0 - (int)(col0 / CPT);
    s.in_rows = 0;
    s.rows_ok = 0;
#pragma unroll
    for (int j = 0; j < S::Map::ITERS; ++j) {
        const int row = (int)row0 + S::Map::row_add(j);
        s.in_rows |= (fpx_u32)(row < M_TILE) << j;
        s.rows_ok |= (fpx_u32)(m0 + row < M) << j;
    }
}

// The K steps of split z (blockIdx.z): STEPS / SPLIT_K each, one more for the first
// STEPS % SPLIT_K splits, so no split is more than one step longer than another.
template <int STEPS, int SPLIT_K>
struct SplitSteps {
    int begin;
    int count;
    __device__ __forceinline__ explicit SplitSteps(int z) {
        constexpr int BASE = STEPS / SPLIT_K, REM = STEPS % SPLIT_K;
        begin = z * BASE + (z < REM ? z : REM);
        count = BASE + (z < REM ? 1 : 0);
    }
};

// A block's K loop over `nsteps` steps through a ring of STAGES stages (STAGE_BYTES each) at
// shared address `sbase` (generic pointer `smem`), STAGES - 1 steps in flight: `load(stage)`
// queues one step's cp.asyncs into the stage at shared address `stage`, `compute(p)` consumes
// the stage at `p`. Every thread of the block calls it; all copies are waited for on return.
template <int STAGES, int STAGE_BYTES, typename Load, typename Compute>
__device__ __forceinline__ void k_pipeline(int nsteps, fpx_u32 sbase, const unsigned char* smem, Load&& load, Compute&& compute) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nsteps) load(sbase + s * STAGE_BYTES);
        cp_async_commit();
    }
    // Ring positions: `read` holds step it, `write` receives step it + STAGES - 1.
    int read = 0, write = STAGES - 1;
    for (int it = 0; it < nsteps; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        // The slot refilled here was consumed in iteration it - 1, which every thread has
        // finished (the barrier above).
        if (it + STAGES - 1 < nsteps) load(sbase + write * STAGE_BYTES);
        cp_async_commit();
        compute(smem + read * STAGE_BYTES);
        read = read == STAGES - 1 ? 0 : read + 1;
        write = write == STAGES - 1 ? 0 : write + 1;
    }
    cp_async_wait<0>();
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
    // The stage's three cp.async streams: low plane (KT*16 chunks per n-tile), high plane (KT*8),
    // activations (K_STEP/8 chunks of 8 halves per token row).
    static constexpr bool K_TAIL = K_TILES % KT != 0;
    using LowStream = ChunkStream<BLOCK_NT, KT * 16, THREADS, 16, (long long)K_TILES * 256, KT * 256, N_TILES % BLOCK_NT != 0, K_TAIL, true>;
    using HighStream = ChunkStream<BLOCK_NT, KT * 8, THREADS, 8, (long long)K_TILES * 128, KT * 128, N_TILES % BLOCK_NT != 0, K_TAIL, true>;
    using XStream = ChunkStream<M_TILE, K_STEP / 8, THREADS, 4, (long long)K_PAD * 2, X_STRIDE * 2, true, K_TAIL, false>;

    static_assert(M_TILE == 8 || M_TILE == 16 || M_TILE == 32 || M_TILE == 64, "token tile must be 8, 16, 32 or 64");
    static_assert(KT == 1 || KT == 2 || KT == 4, "1, 2 or 4 k-tiles per stage");
    static_assert(STAGES >= 2 && STAGES <= 8, "2..8 pipeline stages");
    static_assert(SPLIT_K >= 1 && SPLIT_K <= STEPS, "1..STEPS K splits");
    static_assert(FORMAT == 0 || FORMAT == 1, "FORMAT 0 = e3m2, 1 = e2m3");
    static_assert(ACT == 0 || ACT == 1, "ACT 0 = fp16, 1 = bf16");

    // The thread's three streams, positioned at K step `step0` of block (nt0, m0).
    static __device__ __forceinline__ void open_streams(LowStream& lo, HighStream& hi, XStream& xs, const fpx_u16* X, const unsigned char* W,
                                                        int M, int nt0, int m0, int step0) {
        const int kt0 = step0 * KT;
        open_tile_stream<LowStream, BLOCK_NT, N_TILES, K_TILES, KT, 256>(lo, W, 0, nt0, kt0);
        open_tile_stream<HighStream, BLOCK_NT, N_TILES, K_TILES, KT, 128>(hi, W + LOW_PLANE_BYTES, W_LOW_BYTES, nt0, kt0);
        open_token_stream<XStream, M_TILE, K_TILES, KT, 4, (long long)K_PAD * 2, X_STRIDE * 2>(xs, (const unsigned char*)X, W_LOW_BYTES + W_HIGH_BYTES,
                                                                                              M, m0, kt0);
    }

    // Queues the cp.asyncs of the streams' next K step into the stage at shared address `stage`.
    static __device__ __forceinline__ void load_stage(fpx_u32 stage, LowStream& lo, HighStream& hi, XStream& xs, fpx_u64 policy) {
#if !defined(FPX_PROBE) || FPX_PROBE != 2
        lo.issue(stage, policy, KT, KT * 256);
        hi.issue(stage, policy, KT, KT * 128);
        xs.issue(stage, policy, KT, K_STEP * 2);
#endif
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
            a[0] = dequant_pair<FORMAT, ACT, HALF, 0>(lw[i][HALF], hw[i]);
            a[1] = dequant_pair<FORMAT, ACT, HALF, 1>(lw[i][HALF], hw[i]);
            a[2] = dequant_pair<FORMAT, ACT, HALF, 2>(lw[i][HALF], hw[i]);
            a[3] = dequant_pair<FORMAT, ACT, HALF, 3>(lw[i][HALF], hw[i]);
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
                hw[i] = prepare_high<FORMAT, ACT>(shigh[tile * 32 + lane]);
            }
            mma_half<0>(acc, lw, hw, sx + kt * 32);
            mma_half<1>(acc, lw, hw, sx + kt * 32);
        }
    }

    static __device__ __forceinline__ void run(const fpx_u16* __restrict__ X, const unsigned char* __restrict__ W,
                                               const float* __restrict__ scales, const float* __restrict__ bias, fpx_u16* __restrict__ Y,
                                               float* __restrict__ ws, unsigned* __restrict__ counters, int M) {
        extern __shared__ __align__(16) unsigned char fpx_smem[];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        // Token tiles run fastest (x), so the blocks reading the same weights run together.
        const int m0 = blockIdx.x * M_TILE;
        const int nt0 = blockIdx.y * BLOCK_NT;
        const SplitSteps<STEPS, SPLIT_K> steps(blockIdx.z);
        const fpx_u64 policy = weight_policy(gridDim.x == 1);
        LowStream lo;
        HighStream hi;
        XStream xs;
        open_streams(lo, hi, xs, X, W, M, nt0, m0, steps.begin);

        float acc[WNT][MB][4];
#pragma unroll
        for (int i = 0; i < WNT; ++i)
#pragma unroll
            for (int mb = 0; mb < MB; ++mb)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][mb][q] = 0.0f;

        k_pipeline<STAGES, STAGE_BYTES>(
            steps.count, smem_addr(fpx_smem), fpx_smem, [&](fpx_u32 stage) { load_stage(stage, lo, hi, xs, policy); },
            [&](const unsigned char* stage) { compute_stage(acc, stage); });

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
        if (SPLIT_K > 1) finish_split(scales, bias, Y, ws, counters, M, nt0, m0);
    }

    // Split-K: the last of the output block's SPLIT_K blocks to arrive sums the partials in
    // split order, scales, adds the bias and writes Y; it resets the block's counter.
    static __device__ __forceinline__ void finish_split(const float* __restrict__ scales, const float* __restrict__ bias,
                                                        fpx_u16* __restrict__ Y, const float* ws, unsigned* counters, int M, int nt0,
                                                        int m0) {
        if (!last_split_arrived<SPLIT_K>(counters)) return;
        const float adj = scale_adjust<FORMAT, ACT>();
        constexpr int BLOCK_N = BLOCK_NT * 16;
        for (int idx = threadIdx.x; idx < M_TILE * BLOCK_N; idx += THREADS) {
            const int tok = m0 + idx / BLOCK_N, ch = nt0 * 16 + idx % BLOCK_N;
            if (tok >= M || ch >= N) continue;
            float s = 0.0f;
#pragma unroll
            for (int z = 0; z < SPLIT_K; ++z) s += load_cg(ws + ((fpx_u64)z * M + tok) * N + ch);
            Y[(fpx_u64)tok * N + ch] = from_f32<ACT>(s * (scales[ch] * adj) + (bias ? bias[ch] : 0.0f));
        }
    }
};

}  // namespace fpx
