// The integer tensor-core GEMM of every precision with quantized activations, templated on the operand
// code widths: W4A4 (int4 x int4, w4a4_gemm.cu), W4A8 (int8 activations x int4 weights) and W8A8 (int8 x int8,
// both a8_gemm.cu). Included by those .cu files only (device code; no torch headers, see w4a4_cuda.h).
//
// out[m, n] = ((float)acc[m, n] * sx[m]) * sw[n] (+ bias[n]) -> out dtype, acc = sum_k qx[m, k] * qw[n, k] the
// exact int32 dot product. Operands are row-major, K-contiguous: a 4-bit row holds two codes per byte (code 2j
// in the low nibble of byte j, two's complement), an 8-bit row one int8 per byte. Row bytes are multiples of
// 16 (the binding pads K with zero codes).
//
// Tensor-core path (one source, selected by FC_ARCH = __CUDA_ARCH__ at compile time and by the precision):
//   W4A4 on sm_80/86/89: mma.sync.m16n8k64 s4 (native IMMA.16864.S4.S4).
//   everything else (W4A4 on sm_90+, W4A8 and W8A8 everywhere): mma.sync.m16n8k32 s8. A 4-bit operand's
//                fragment word (8 nibbles) is sign-extended into two s8x4 words (even codes, odd codes); an
//                8-bit operand paired with a 4-bit one has its two words of the same 8 codes permuted into the
//                same even/odd order (one PRMT each); two 8-bit operands are used as loaded.
// Integer sums are exact in any order, so it is enough that A and B use the same permutation of K inside one
// mma: thread t's registers cover the same K positions for A and for B, hence the int32 accumulators equal
// the reference's on every architecture and path.
//
// Kernels:
//   gemm_tiled:   M > 16. CTA tile (32*WARPS_M) x (64*WARPS_N), 64 bytes of the wider operand's rows per
//                 stage (128 codes for W4A4, 64 with an 8-bit operand), 3-stage cp.async pipeline, padded
//                 shared-memory rows (conflict-free fragment loads), optional split-K over gridDim.z into an
//                 int32 workspace (integer atomics: exact and order-independent).
//   gemm_small_m: M <= 16. One m16 tile; each warp streams 32 weight rows straight from global memory in
//                 16-byte loads (128 bytes of every weight row per K block), split-K over gridDim.y.
//   epilogue:     int32 workspace -> scaled output, for the split-K launches.
#ifndef FAIR_CALIB_INT_GEMM_H
#define FAIR_CALIB_INT_GEMM_H

#include <stdint.h>

#include "w4a4_cuda.h"
#include "w4a4_device.h"

namespace {

// ---------------------------------------------------------------------------------------------------------
// Precision: code widths of the activations (A) and the weights (B).
template <int A_BITS, int B_BITS>
struct Prec {
  static_assert((A_BITS == 4 || A_BITS == 8) && (B_BITS == 4 || B_BITS == 8), "4- or 8-bit codes");
  static constexpr int kABits = A_BITS, kBBits = B_BITS;
  static constexpr int kWideBits = A_BITS > B_BITS ? A_BITS : B_BITS;
  // tiled kernel: codes of K per pipeline stage (64 bytes of the wider operand's rows)
  static constexpr int kStageK = 64 * 8 / kWideBits;
  // small-M kernel: codes of K per block (128 bytes of every weight row)
  static constexpr int kSmallK = 128 * 8 / B_BITS;
  // K must be a multiple of this (every row a multiple of 16 bytes)
  static constexpr int kAlignK = 128 / (A_BITS < B_BITS ? A_BITS : B_BITS);
};
using PrecW4A4 = Prec<4, 4>;
using PrecW4A8 = Prec<8, 4>;
using PrecW8A8 = Prec<8, 8>;

// Eight consecutive codes of one row (in the K positions a thread owns): one word of nibbles or two of bytes.
template <int BITS>
struct Frag {
  uint32_t w[BITS / 4];
};

// ---------------------------------------------------------------------------------------------------------
// One 16x8x64 step: c += A[16 x 64] * B[64 x 8].
// a[0]: row g, 8 codes; a[1]: row g+8, same codes; a[2]: row g, 8 further codes; a[3]: row g+8, same.
// b[0]: column g, the codes of a[0]/a[1]; b[1]: column g, the codes of a[2]/a[3]. (g = lane / 4)
__device__ __forceinline__ uint32_t sext_nibbles(uint32_t v) {
  // v holds four nibbles in the low half of each byte; sign-extend each to an int8 (8 * 0x1E = 0xF0 per
  // byte, no carry between bytes).
  return v | ((v & 0x08080808u) * 0x1Eu);
}

// The 8 codes of a fragment as two s8x4 words for m16n8k32: s[0] feeds K positions 4t..4t+3 of the mma,
// s[1] positions 16+4t..16+4t+3. 4-bit: even codes, odd codes. 8-bit with a 4-bit partner: the same
// even/odd order (byte permutes); 8-bit with an 8-bit partner: codes 0-3, 4-7 as loaded.
template <int BITS, int PARTNER_BITS>
__device__ __forceinline__ void to_s8(const Frag<BITS>& f, uint32_t (&s)[2]) {
  if constexpr (BITS == 4) {
    s[0] = sext_nibbles(f.w[0] & 0x0F0F0F0Fu);
    s[1] = sext_nibbles((f.w[0] >> 4) & 0x0F0F0F0Fu);
  } else if constexpr (PARTNER_BITS == 4) {
    s[0] = __byte_perm(f.w[0], f.w[1], 0x6420u);  // codes 0, 2, 4, 6
    s[1] = __byte_perm(f.w[0], f.w[1], 0x7531u);  // codes 1, 3, 5, 7
  } else {
    s[0] = f.w[0];
    s[1] = f.w[1];
  }
}

__device__ __forceinline__ void mma_s8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // built for an architecture without integer mma.sync: never launched (the binding checks sm >= 80)
#else
  mma_m16n8k32_s8(c, a0, a1, a2, a3, b0, b1);
#endif
}

// Whether precision P runs the native int4 mma: W4A4 on sm_80/86/89 (Hopper has no int4 tensor cores).
template <class P>
constexpr bool kNativeS4 = P::kABits == 4 && P::kBBits == 4 && FC_ARCH >= 800 && FC_ARCH < 900;

template <class P>
__device__ __forceinline__ void mma_step(int32_t (&c)[4], const Frag<P::kABits> (&a)[4],
                                         const Frag<P::kBBits> (&b)[2]) {
  if constexpr (kNativeS4<P>) {
    mma_m16n8k64_s4(c, a[0].w[0], a[1].w[0], a[2].w[0], a[3].w[0], b[0].w[0], b[1].w[0]);
  } else {
    // m16n8k32 s8: A regs {row g k0-3, row g+8 k0-3, row g k16-19, row g+8 k16-19} (per thread group),
    // B regs {k0-3, k16-19}: one mma per half of the step.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t ag[2], ag8[2], bs[2];
      to_s8<P::kABits, P::kBBits>(a[2 * h], ag);
      to_s8<P::kABits, P::kBBits>(a[2 * h + 1], ag8);
      to_s8<P::kBBits, P::kABits>(b[h], bs);
      mma_s8(c, ag[0], ag8[0], ag[1], ag8[1], bs[0], bs[1]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Epilogue: the reference's fp32 order, with intrinsics so nothing is contracted into an FMA.
template <int OUT>
struct Store;

template <>
struct Store<FC_OUT_F32> {
  static __device__ __forceinline__ void put(void* out, int64_t idx, float v) { static_cast<float*>(out)[idx] = v; }
};
template <>
struct Store<FC_OUT_BF16> {
  static __device__ __forceinline__ void put(void* out, int64_t idx, float v) {
    static_cast<__nv_bfloat16*>(out)[idx] = __float2bfloat16_rn(v);
  }
};
template <>
struct Store<FC_OUT_F16> {
  static __device__ __forceinline__ void put(void* out, int64_t idx, float v) {
    static_cast<__half*>(out)[idx] = __float2half_rn(v);
  }
};

struct Epi {
  const float* sx;
  const float* sw;
  const float* bias;
  void* out;
};

template <int OUT>
__device__ __forceinline__ void epilogue_store(const Epi& e, int64_t m, int64_t n, int64_t ldo, int32_t acc) {
  if constexpr (OUT == FC_OUT_I32) {
    static_cast<int32_t*>(e.out)[m * ldo + n] = acc;
  } else {
    float v = __fmul_rn(__int2float_rn(acc), e.sx[m]);
    v = __fmul_rn(v, e.sw[n]);
    if (e.bias != nullptr) v = __fadd_rn(v, e.bias[n]);
    Store<OUT>::put(e.out, m * ldo + n, v);
  }
}

// Write (or, for split-K, atomically add) one accumulator.
template <int OUT>
__device__ __forceinline__ void emit(const Epi& e, int32_t* ws, bool split, int64_t m, int64_t n, int64_t ldo,
                                     int32_t acc) {
  if (split) {
    atomicAdd(ws + m * ldo + n, acc);
  } else {
    epilogue_store<OUT>(e, m, n, ldo, acc);
  }
}

template <int OUT>
__global__ void epilogue_kernel(const int32_t* __restrict__ ws, Epi e, int64_t m, int64_t n) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    epilogue_store<OUT>(e, i / n, i % n, n, ws[i]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tiled kernel (cp.async and mma.sync wrappers in w4a4_device.h).
constexpr int kStages = 3;

// Shared-memory row of one operand in one stage: 64 bytes for the wider operand (32 for a 4-bit operand beside
// an 8-bit one), padded so the fragment loads are conflict-free: +16 bytes for 4-byte loads (rows g = 0..7 land
// in distinct 16-byte bank groups), +32 for the 8-byte loads of 8-bit rows (each half-warp's rows g = 0..3 in
// distinct 32-byte groups).
template <int BITS, int WIDE_BITS>
struct SmemRow {
  static constexpr int kBytes = 64 * BITS / WIDE_BITS;
  static constexpr int kStride = kBytes + (BITS == 8 ? 32 : 16);
  static constexpr int kChunks = kBytes / 16;  // 16-byte cp.async per row per stage
};

template <class P, int WARPS_M, int WARPS_N>
struct TileCfg {
  using RowA = SmemRow<P::kABits, P::kWideBits>;
  using RowB = SmemRow<P::kBBits, P::kWideBits>;
  static constexpr int kBM = 32 * WARPS_M;  // each warp: 2 m16 tiles
  static constexpr int kBN = 64 * WARPS_N;  // each warp: 8 n8 tiles
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kSmemBytes = kStages * (kBM * RowA::kStride + kBN * RowB::kStride);
  // within the opt-in shared memory of every target (99 KB on sm_86/89)
  static_assert(kSmemBytes <= 99 * 1024, "tile does not fit the shared memory of sm_86/89");
};

// The fragment of 8 codes starting at code `code` of a shared-memory (or register-file) row.
template <int BITS>
__device__ __forceinline__ Frag<BITS> frag_at(const uint8_t* row, int code) {
  Frag<BITS> f;
  if constexpr (BITS == 4) {
    f.w[0] = *reinterpret_cast<const uint32_t*>(row + static_cast<unsigned>(code) / 2);
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(row + code);
    f.w[0] = v.x;
    f.w[1] = v.y;
  }
  return f;
}

template <class P, int WARPS_M, int WARPS_N, int OUT>
__global__ void __launch_bounds__(TileCfg<P, WARPS_M, WARPS_N>::kThreads)
    gemm_tiled(const uint8_t* __restrict__ xq, const uint8_t* __restrict__ wq, Epi e, int32_t* ws, int m, int n,
               int k, int ktiles_per_split) {
  using Cfg = TileCfg<P, WARPS_M, WARPS_N>;
  using RowA = typename Cfg::RowA;
  using RowB = typename Cfg::RowB;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, THREADS = Cfg::kThreads;
  constexpr int SA = RowA::kStride, SB = RowB::kStride;
  FC_EXTERN_SHARED(uint8_t, smem, 16);
  uint8_t* sa = smem;                       // [kStages][BM][SA]
  uint8_t* sb = smem + kStages * BM * SA;   // [kStages][BN][SB]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int bm0 = blockIdx.y * BM, bn0 = blockIdx.x * BN;
  const int lda = static_cast<unsigned>(k) / 8 * P::kABits, ldb = static_cast<unsigned>(k) / 8 * P::kBBits;
  const int ktiles = (k + P::kStageK - 1) / P::kStageK;
  const int kt_begin = blockIdx.z * ktiles_per_split;
  const int kt_end = min(ktiles, kt_begin + ktiles_per_split);
  const bool split = gridDim.z > 1;

  auto load_stage = [&](int stage, int kt) {
#pragma unroll
    for (int idx = tid; idx < BM * RowA::kChunks; idx += THREADS) {
      const int r = static_cast<unsigned>(idx) / RowA::kChunks, c = static_cast<unsigned>(idx) % RowA::kChunks;
      const int row = bm0 + r, off = kt * RowA::kBytes + c * 16;
      const bool ok = row < m && off < lda;
      const uint8_t* src = xq + static_cast<int64_t>(ok ? row : 0) * lda + (ok ? off : 0);
      cp_async16(sa + (stage * BM + r) * SA + c * 16, src, ok ? 16 : 0);
    }
#pragma unroll
    for (int idx = tid; idx < BN * RowB::kChunks; idx += THREADS) {
      const int r = static_cast<unsigned>(idx) / RowB::kChunks, c = static_cast<unsigned>(idx) % RowB::kChunks;
      const int row = bn0 + r, off = kt * RowB::kBytes + c * 16;
      const bool ok = row < n && off < ldb;
      const uint8_t* src = wq + static_cast<int64_t>(ok ? row : 0) * ldb + (ok ? off : 0);
      cp_async16(sb + (stage * BN + r) * SB + c * 16, src, ok ? 16 : 0);
    }
  };

  int32_t acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (kt_begin + s < kt_end) load_stage(s, kt_begin + s);
    cp_async_commit();
  }

  for (int kt = kt_begin; kt < kt_end; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt is in shared memory, and every warp is done with the stage reloaded below
    const int next = kt + kStages - 1;
    if (next < kt_end) load_stage((next - kt_begin) % kStages, next);
    cp_async_commit();

    const int stage = (kt - kt_begin) % kStages;
    const uint8_t* a_s = sa + (stage * BM + wm * 32) * SA;
    const uint8_t* b_s = sb + (stage * BN + wn * 64) * SB;
#pragma unroll
    for (int kk = 0; kk < P::kStageK / 64; ++kk) {
      const int lo = kk * 64 + t * 8, hi = lo + 32;  // this thread's codes of the step, within the stage
      Frag<P::kABits> af[2][4];
      Frag<P::kBBits> bf[8][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint8_t* r = a_s + (i * 16 + g) * SA;
        af[i][0] = frag_at<P::kABits>(r, lo);
        af[i][1] = frag_at<P::kABits>(r + 8 * SA, lo);
        af[i][2] = frag_at<P::kABits>(r, hi);
        af[i][3] = frag_at<P::kABits>(r + 8 * SA, hi);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint8_t* r = b_s + (j * 8 + g) * SB;
        bf[j][0] = frag_at<P::kBBits>(r, lo);
        bf[j][1] = frag_at<P::kBBits>(r, hi);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) mma_step<P>(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();

  // Accumulator layout: c0, c1 -> row g, columns 2t, 2t+1; c2, c3 -> row g+8.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int r0 = bm0 + wm * 32 + i * 16 + g;
      const int c0 = bn0 + wn * 64 + j * 8 + 2 * t;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = r0 + (r >= 2 ? 8 : 0), col = c0 + (r & 1);
        if (row < m && col < n) emit<OUT>(e, ws, split, row, col, n, acc[i][j][r]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Small M (<= 16): one m16 tile per CTA, kSmallWarps warps x kSmallNT n8 tiles, K in blocks of P::kSmallK
// codes. Thread t holds the codes [t*kSmallK/8, (t+1)*kSmallK/8) of each row ("lo") and the same codes
// kSmallK/2 further ("hi"), in 16-byte vectors; step s of the block takes codes [8s, 8s+8) of both.
constexpr int kSmallWarps = 4;
constexpr int kSmallNT = 4;

__device__ __forceinline__ uint4 load16(const uint8_t* base, int64_t row_off, int off, bool ok) {
  if (!ok) return make_uint4(0u, 0u, 0u, 0u);
  return __ldg(reinterpret_cast<const uint4*>(base + row_off + off));
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// One thread's share of a row in a K block: kSmallK/8 codes of BITS bits, in 16-byte vectors.
template <class P, int BITS>
struct Share {
  static constexpr int kVecs = P::kSmallK / 8 * BITS / 8 / 16;
  uint4 v[kVecs];
};

// Loads the share starting at code `code` of the row at `row_off`. Each 16-byte vector (128 / BITS codes) is
// all in or all out of the row (K is a multiple of P::kAlignK), so the bound is checked in codes: the same
// predicate for A and B where their vectors cover the same codes.
template <class P, int BITS>
__device__ __forceinline__ Share<P, BITS> load_share(const uint8_t* base, int64_t row_off, int code, int k,
                                                     bool ok) {
  Share<P, BITS> s;
  const int off = static_cast<unsigned>(code) / 8 * BITS;
#pragma unroll
  for (int q = 0; q < Share<P, BITS>::kVecs; ++q) {
    s.v[q] = load16(base, row_off, off + 16 * q, ok && (q == 0 || code + q * (128 / BITS) < k));
  }
  return s;
}

// Codes [8s, 8s+8) of a share's vectors v.
template <int BITS>
__device__ __forceinline__ Frag<BITS> share_frag(const uint4* v, int s) {
  Frag<BITS> f;
#pragma unroll
  for (int q = 0; q < BITS / 4; ++q) {
    const int w = s * (BITS / 4) + q;
    f.w[q] = word(v[w / 4], w % 4);
  }
  return f;
}

template <class P, int OUT>
__global__ void __launch_bounds__(32 * kSmallWarps)
    gemm_small_m(const uint8_t* __restrict__ xq, const uint8_t* __restrict__ wq, Epi e, int32_t* ws, int m, int n,
                 int k, int kblocks_per_split) {
  constexpr int A = P::kABits, B = P::kBBits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * kSmallWarps + warp) * kSmallNT * 8;
  const int lda = static_cast<unsigned>(k) / 8 * A, ldb = static_cast<unsigned>(k) / 8 * B;  // row bytes
  const int kblocks = (k + P::kSmallK - 1) / P::kSmallK;
  const int kb_begin = blockIdx.y * kblocks_per_split;
  const int kb_end = min(kblocks, kb_begin + kblocks_per_split);
  const bool split = gridDim.y > 1;

  const bool row0_ok = g < m, row1_ok = g + 8 < m;
  const int64_t a_off0 = static_cast<int64_t>(row0_ok ? g : 0) * lda;
  const int64_t a_off1 = static_cast<int64_t>(row1_ok ? g + 8 : 0) * lda;
  int64_t b_off[kSmallNT];
  bool b_ok[kSmallNT];
#pragma unroll
  for (int j = 0; j < kSmallNT; ++j) {
    const int row = n0 + j * 8 + g;
    b_ok[j] = row < n;
    b_off[j] = static_cast<int64_t>(b_ok[j] ? row : 0) * ldb;
  }

  int32_t acc[kSmallNT][4];
#pragma unroll
  for (int j = 0; j < kSmallNT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0;

  for (int blk = kb_begin; blk < kb_end; ++blk) {
    const int lo = blk * P::kSmallK + t * (P::kSmallK / 8), hi = lo + P::kSmallK / 2;  // codes
    const bool lo_ok = lo < k, hi_ok = hi < k;  // the first vector of each share is in the row
    const Share<P, A> a0l = load_share<P, A>(xq, a_off0, lo, k, row0_ok && lo_ok);
    const Share<P, A> a0h = load_share<P, A>(xq, a_off0, hi, k, row0_ok && hi_ok);
    const Share<P, A> a1l = load_share<P, A>(xq, a_off1, lo, k, row1_ok && lo_ok);
    const Share<P, A> a1h = load_share<P, A>(xq, a_off1, hi, k, row1_ok && hi_ok);
    Share<P, B> bl[kSmallNT], bh[kSmallNT];
#pragma unroll
    for (int j = 0; j < kSmallNT; ++j) {
      bl[j] = load_share<P, B>(wq, b_off[j], lo, k, b_ok[j] && lo_ok);
      bh[j] = load_share<P, B>(wq, b_off[j], hi, k, b_ok[j] && hi_ok);
    }
#pragma unroll
    for (int s = 0; s < P::kSmallK / 64; ++s) {
      const Frag<A> af[4] = {share_frag<A>(a0l.v, s), share_frag<A>(a1l.v, s), share_frag<A>(a0h.v, s),
                             share_frag<A>(a1h.v, s)};
#pragma unroll
      for (int j = 0; j < kSmallNT; ++j) {
        const Frag<B> bf[2] = {share_frag<B>(bl[j].v, s), share_frag<B>(bh[j].v, s)};
        mma_step<P>(acc[j], af, bf);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kSmallNT; ++j) {
    const int c0 = n0 + j * 8 + 2 * t;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = g + (r >= 2 ? 8 : 0), col = c0 + (r & 1);
      if (row < m && col < n) emit<OUT>(e, ws, split, row, col, n, acc[j][r]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launch planning (shared by the workspace query and the launch, so both agree).
struct Plan {
  int kind;    // 0: small-M, 1: tiled 2x2 warps (64x128), 2: tiled 4x2 warps (128x128)
  int splits;  // split-K factor (1: no workspace)
  int per_split;
  int grid_x, grid_y;
};

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class P>
Plan make_plan(int64_t m, int64_t n, int64_t k, int num_sms) {
  Plan p{};
  if (num_sms <= 0) num_sms = 1;
  if (m <= 16) {
    p.kind = 0;
    p.grid_x = static_cast<int>(cdiv(n, kSmallWarps * kSmallNT * 8));
    const int64_t kblocks = cdiv(k, P::kSmallK);
    int64_t splits = cdiv(2 * num_sms, p.grid_x);  // about two CTAs per SM
    splits = splits < 1 ? 1 : (splits > kblocks ? kblocks : splits);
    p.per_split = static_cast<int>(cdiv(kblocks, splits));
    p.splits = static_cast<int>(cdiv(kblocks, p.per_split));
    p.grid_y = p.splits;
    return p;
  }
  p.kind = m <= 64 ? 1 : 2;
  const int bm = p.kind == 1 ? TileCfg<P, 2, 2>::kBM : TileCfg<P, 4, 2>::kBM;
  const int bn = p.kind == 1 ? TileCfg<P, 2, 2>::kBN : TileCfg<P, 4, 2>::kBN;
  p.grid_x = static_cast<int>(cdiv(n, bn));
  p.grid_y = static_cast<int>(cdiv(m, bm));
  const int64_t ctas = static_cast<int64_t>(p.grid_x) * p.grid_y;
  const int64_t ktiles = cdiv(k, P::kStageK);
  int64_t splits = 1;
  if (ctas < num_sms) {
    splits = cdiv(num_sms, ctas);
    const int64_t max_splits = ktiles / 8 > 1 ? ktiles / 8 : 1;  // at least 8 pipeline stages per split
    if (splits > max_splits) splits = max_splits;
  }
  p.per_split = static_cast<int>(cdiv(ktiles, splits));
  p.splits = static_cast<int>(cdiv(ktiles, p.per_split));
  return p;
}

bool needs_workspace(const Plan& p, int out_dtype) { return p.splits > 1 && out_dtype != FC_OUT_I32; }

template <class P, int WARPS_M, int WARPS_N, int OUT>
cudaError_t launch_tiled(const Plan& p, const uint8_t* xq, const uint8_t* wq, const Epi& e, int32_t* ws, int m,
                         int n, int k, cudaStream_t stream) {
  using Cfg = TileCfg<P, WARPS_M, WARPS_N>;
  auto kernel = gemm_tiled<P, WARPS_M, WARPS_N, OUT>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  dim3 grid(p.grid_x, p.grid_y, p.splits);
  FC_LAUNCH(kernel, grid, Cfg::kThreads, Cfg::kSmemBytes, stream)(xq, wq, e, ws, m, n, k, p.per_split);
  return cudaGetLastError();
}

template <class P, int OUT>
cudaError_t run_gemm(const Plan& p, const uint8_t* xq, const uint8_t* wq, const Epi& e, int32_t* ws, int m, int n,
                     int k, cudaStream_t stream) {
  if (p.splits > 1) {
    cudaError_t err = cudaMemsetAsync(ws, 0, sizeof(int32_t) * static_cast<size_t>(m) * n, stream);
    if (err != cudaSuccess) return err;
  }
  cudaError_t err;
  if (p.kind == 0) {
    dim3 grid(p.grid_x, p.grid_y);
    auto gemm_small_m_kernel = gemm_small_m<P, OUT>;
    FC_LAUNCH(gemm_small_m_kernel, grid, 32 * kSmallWarps, 0, stream)(xq, wq, e, ws, m, n, k, p.per_split);
    err = cudaGetLastError();
  } else if (p.kind == 1) {
    err = launch_tiled<P, 2, 2, OUT>(p, xq, wq, e, ws, m, n, k, stream);
  } else {
    err = launch_tiled<P, 4, 2, OUT>(p, xq, wq, e, ws, m, n, k, stream);
  }
  if (err != cudaSuccess || p.splits == 1 || OUT == FC_OUT_I32) return err;
  const int64_t total = static_cast<int64_t>(m) * n;
  const int blocks = static_cast<int>(total / 256 + 1 < 65535 ? total / 256 + 1 : 65535);
  FC_LAUNCH(epilogue_kernel<OUT>, blocks, 256, 0, stream)(ws, e, m, n);
  return cudaGetLastError();
}

// The C ABI functions of one precision (k in codes).
template <class P>
size_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_sms, int out_dtype) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const Plan p = make_plan<P>(m, n, k, num_sms);
  return needs_workspace(p, out_dtype) ? sizeof(int32_t) * static_cast<size_t>(m) * static_cast<size_t>(n) : 0;
}

template <class P>
int gemm(const void* xq_, const float* sx, const void* wq_, const float* sw, const float* bias, void* out,
         int out_dtype, int64_t m, int64_t n, int64_t k, void* workspace, int num_sms, void* stream) {
  const uint8_t* xq = static_cast<const uint8_t*>(xq_);
  const uint8_t* wq = static_cast<const uint8_t*>(wq_);
  if (m < 0 || n < 0 || k <= 0 || k % P::kAlignK != 0 || m > INT32_MAX || n > INT32_MAX ||
      k > INT32_MAX - 1024 || (reinterpret_cast<uintptr_t>(xq) | reinterpret_cast<uintptr_t>(wq)) % 16 != 0 ||
      out == nullptr)
    return FC_ERR_BAD_ARGUMENT;
  if (m == 0 || n == 0) return 0;
  const Plan p = make_plan<P>(m, n, k, num_sms);
  int32_t* ws = out_dtype == FC_OUT_I32 ? static_cast<int32_t*>(out) : static_cast<int32_t*>(workspace);
  if (needs_workspace(p, out_dtype) && workspace == nullptr) return FC_ERR_BAD_ARGUMENT;
  const Epi e{sx, sw, bias, out};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  cudaError_t err;
  switch (out_dtype) {
    case FC_OUT_F32:
      err = run_gemm<P, FC_OUT_F32>(p, xq, wq, e, ws, mi, ni, ki, s);
      break;
    case FC_OUT_BF16:
      err = run_gemm<P, FC_OUT_BF16>(p, xq, wq, e, ws, mi, ni, ki, s);
      break;
    case FC_OUT_F16:
      err = run_gemm<P, FC_OUT_F16>(p, xq, wq, e, ws, mi, ni, ki, s);
      break;
    case FC_OUT_I32:
      err = run_gemm<P, FC_OUT_I32>(p, xq, wq, e, ws, mi, ni, ki, s);
      break;
    default:
      return FC_ERR_BAD_ARGUMENT;
  }
  return static_cast<int>(err);
}

}  // namespace

#endif /* FAIR_CALIB_INT_GEMM_H */
