// CUDA W4A4 GEMM: packed int4 activations [M, kb] x packed int4 weights [N, kb] -> exact int32
// accumulators -> fp32 epilogue ((acc * sx[m]) * sw[n] (+ bias[n])) -> out dtype.
// No torch headers here (see w4a4_cuda.h).
//
// Tensor-core path by architecture (one source, selected by FC_ARCH = __CUDA_ARCH__ at compile time):
//   sm_80/86/89: mma.sync.m16n8k64 s4 (native IMMA.16864.S4.S4).
//   sm_90+:      Hopper has no int4 tensor cores (the s4 mma compiles to a slow emulation), so each 32-bit
//                fragment word (8 nibbles) is sign-extended into two s8x4 words (even codes, odd codes) and
//                fed to two mma.sync.m16n8k32 s8.
// Both paths load the same fragment words. Integer sums are exact in any order, so it is enough that A and
// B use the same permutation of K inside one step: thread t's register r covers the same K positions for A
// and for B in both instruction shapes, hence the int32 accumulators are identical on every architecture.
//
// Kernels:
//   gemm_tiled:   M > 16. CTA tile (32*WARPS_M) x (64*WARPS_N), 64 bytes (128 codes) of K per stage,
//                 3-stage cp.async pipeline, padded shared-memory rows (80 bytes: conflict-free fragment
//                 loads), optional split-K over gridDim.z into an int32 workspace (integer atomics: exact
//                 and order-independent).
//   gemm_small_m: M <= 16. One m16 tile; each warp streams 32 weight rows straight from global memory in
//                 16-byte loads (no reuse to exploit), split-K over gridDim.y for enough CTAs.
//   epilogue:     int32 workspace -> scaled output, for the split-K launches.
#ifdef FC_HOST_EMULATION
#include "emu/cuda_emu.h"  // host emulation of the CUDA built-ins and runtime (tests only, never for nvcc)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
#include <stdint.h>

#include "w4a4_cuda.h"
#include "w4a4_device.h"

namespace {

// ---------------------------------------------------------------------------------------------------------
// One 16x8x64 step: c += A[16 x 64] * B[64 x 8].
// a[0]: row g, 8 codes; a[1]: row g+8, same codes; a[2]: row g, 8 further codes; a[3]: row g+8, same.
// b[0]: column g, the codes of a[0]/a[1]; b[1]: column g, the codes of a[2]/a[3]. (g = lane / 4)
#if FC_ARCH >= 900
__device__ __forceinline__ uint32_t sext_nibbles(uint32_t v) {
  // v holds four nibbles in the low half of each byte; sign-extend each to an int8 (8 * 0x1E = 0xF0 per
  // byte, no carry between bytes).
  return v | ((v & 0x08080808u) * 0x1Eu);
}
#endif

__device__ __forceinline__ void mma_k64(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if FC_ARCH >= 900
  uint32_t ae[4], ao[4], be[2], bo[2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    ae[i] = sext_nibbles(a[i] & 0x0F0F0F0Fu);
    ao[i] = sext_nibbles((a[i] >> 4) & 0x0F0F0F0Fu);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    be[i] = sext_nibbles(b[i] & 0x0F0F0F0Fu);
    bo[i] = sext_nibbles((b[i] >> 4) & 0x0F0F0F0Fu);
  }
  // m16n8k32 s8: A regs {row g k0-3, row g+8 k0-3, row g k16-19, row g+8 k16-19} (per thread group),
  // B regs {k0-3, k16-19}. Virtual k0-3 <- even codes, k16-19 <- odd codes of the same word.
  mma_m16n8k32_s8(c, ae[0], ae[1], ao[0], ao[1], be[0], bo[0]);
  mma_m16n8k32_s8(c, ae[2], ae[3], ao[2], ao[3], be[1], bo[1]);
#elif FC_ARCH >= 800
  mma_m16n8k64_s4(c, a[0], a[1], a[2], a[3], b[0], b[1]);
#elif defined(__CUDA_ARCH__)
  __trap();  // built for an architecture without integer mma.sync: never launched (the binding checks sm >= 80)
#endif
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
constexpr int kStageBytesK = 64;                 // bytes of K per pipeline stage (128 codes = 2 mma steps)
constexpr int kRowStride = kStageBytesK + 16;    // padded shared-memory row: conflict-free 32-bit loads
constexpr int kStages = 3;

template <int WARPS_M, int WARPS_N>
struct TileCfg {
  static constexpr int kBM = 32 * WARPS_M;  // each warp: 2 m16 tiles
  static constexpr int kBN = 64 * WARPS_N;  // each warp: 8 n8 tiles
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kSmemBytes = kStages * (kBM + kBN) * kRowStride;
};

template <int WARPS_M, int WARPS_N, int OUT>
__global__ void __launch_bounds__(TileCfg<WARPS_M, WARPS_N>::kThreads)
    gemm_tiled(const uint8_t* __restrict__ xq, const uint8_t* __restrict__ wq, Epi e, int32_t* ws, int m, int n,
               int kb, int ktiles_per_split) {
  using Cfg = TileCfg<WARPS_M, WARPS_N>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, THREADS = Cfg::kThreads;
  FC_EXTERN_SHARED(uint8_t, smem, 16);
  uint8_t* sa = smem;                                 // [kStages][BM][kRowStride]
  uint8_t* sb = smem + kStages * BM * kRowStride;     // [kStages][BN][kRowStride]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int bm0 = blockIdx.y * BM, bn0 = blockIdx.x * BN;
  const int ktiles = (kb + kStageBytesK - 1) / kStageBytesK;
  const int kt_begin = blockIdx.z * ktiles_per_split;
  const int kt_end = min(ktiles, kt_begin + ktiles_per_split);
  const bool split = gridDim.z > 1;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * kStageBytesK;
#pragma unroll
    for (int idx = tid; idx < BM * 4; idx += THREADS) {
      const int r = idx >> 2, c = idx & 3;
      const int row = bm0 + r, off = k0 + c * 16;
      const bool ok = row < m && off < kb;
      const uint8_t* src = xq + static_cast<int64_t>(ok ? row : 0) * kb + (ok ? off : 0);
      cp_async16(sa + (stage * BM + r) * kRowStride + c * 16, src, ok ? 16 : 0);
    }
#pragma unroll
    for (int idx = tid; idx < BN * 4; idx += THREADS) {
      const int r = idx >> 2, c = idx & 3;
      const int row = bn0 + r, off = k0 + c * 16;
      const bool ok = row < n && off < kb;
      const uint8_t* src = wq + static_cast<int64_t>(ok ? row : 0) * kb + (ok ? off : 0);
      cp_async16(sb + (stage * BN + r) * kRowStride + c * 16, src, ok ? 16 : 0);
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
    const uint8_t* a_s = sa + (stage * BM + wm * 32) * kRowStride;
    const uint8_t* b_s = sb + (stage * BN + wn * 64) * kRowStride;
#pragma unroll
    for (int kk = 0; kk < kStageBytesK / 32; ++kk) {
      const int col = kk * 32 + t * 4;
      uint32_t af[2][4], bf[8][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint8_t* p = a_s + (i * 16 + g) * kRowStride + col;
        af[i][0] = *reinterpret_cast<const uint32_t*>(p);
        af[i][1] = *reinterpret_cast<const uint32_t*>(p + 8 * kRowStride);
        af[i][2] = *reinterpret_cast<const uint32_t*>(p + 16);
        af[i][3] = *reinterpret_cast<const uint32_t*>(p + 8 * kRowStride + 16);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint8_t* p = b_s + (j * 8 + g) * kRowStride + col;
        bf[j][0] = *reinterpret_cast<const uint32_t*>(p);
        bf[j][1] = *reinterpret_cast<const uint32_t*>(p + 16);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) mma_k64(acc[i][j], af[i], bf[j]);
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
// Small M (<= 16): one m16 tile per CTA, kSmallWarps warps x kSmallNT n8 tiles, K in blocks of 128 bytes
// (thread t holds bytes [16t, 16t+16) and [64+16t, 64+16t+16) of each row: 8 words = 4 mma steps).
constexpr int kSmallWarps = 4;
constexpr int kSmallNT = 4;
constexpr int kSmallKBlock = 128;

__device__ __forceinline__ uint4 load16(const uint8_t* base, int64_t row_off, int off, bool ok) {
  if (!ok) return make_uint4(0u, 0u, 0u, 0u);
  return __ldg(reinterpret_cast<const uint4*>(base + row_off + off));
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

template <int OUT>
__global__ void __launch_bounds__(32 * kSmallWarps)
    gemm_small_m(const uint8_t* __restrict__ xq, const uint8_t* __restrict__ wq, Epi e, int32_t* ws, int m, int n,
                 int kb, int kblocks_per_split) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * kSmallWarps + warp) * kSmallNT * 8;
  const int kblocks = (kb + kSmallKBlock - 1) / kSmallKBlock;
  const int kb_begin = blockIdx.y * kblocks_per_split;
  const int kb_end = min(kblocks, kb_begin + kblocks_per_split);
  const bool split = gridDim.y > 1;

  const bool row0_ok = g < m, row1_ok = g + 8 < m;
  const int64_t a_off0 = static_cast<int64_t>(row0_ok ? g : 0) * kb;
  const int64_t a_off1 = static_cast<int64_t>(row1_ok ? g + 8 : 0) * kb;
  int64_t b_off[kSmallNT];
  bool b_ok[kSmallNT];
#pragma unroll
  for (int j = 0; j < kSmallNT; ++j) {
    const int row = n0 + j * 8 + g;
    b_ok[j] = row < n;
    b_off[j] = static_cast<int64_t>(b_ok[j] ? row : 0) * kb;
  }

  int32_t acc[kSmallNT][4];
#pragma unroll
  for (int j = 0; j < kSmallNT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0;

  for (int blk = kb_begin; blk < kb_end; ++blk) {
    const int lo = blk * kSmallKBlock + t * 16, hi = lo + 64;
    const bool lo_ok = lo < kb, hi_ok = hi < kb;  // kb % 16 == 0: a 16-byte load is all in or all out
    const uint4 a0l = load16(xq, a_off0, lo, row0_ok && lo_ok), a0h = load16(xq, a_off0, hi, row0_ok && hi_ok);
    const uint4 a1l = load16(xq, a_off1, lo, row1_ok && lo_ok), a1h = load16(xq, a_off1, hi, row1_ok && hi_ok);
    uint4 bl[kSmallNT], bh[kSmallNT];
#pragma unroll
    for (int j = 0; j < kSmallNT; ++j) {
      bl[j] = load16(wq, b_off[j], lo, b_ok[j] && lo_ok);
      bh[j] = load16(wq, b_off[j], hi, b_ok[j] && hi_ok);
    }
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t af[4] = {word(a0l, s), word(a1l, s), word(a0h, s), word(a1h, s)};
#pragma unroll
      for (int j = 0; j < kSmallNT; ++j) {
        const uint32_t bf[2] = {word(bl[j], s), word(bh[j], s)};
        mma_k64(acc[j], af, bf);
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

Plan make_plan(int64_t m, int64_t n, int64_t kb, int num_sms) {
  Plan p{};
  if (num_sms <= 0) num_sms = 1;
  if (m <= 16) {
    p.kind = 0;
    p.grid_x = static_cast<int>(cdiv(n, kSmallWarps * kSmallNT * 8));
    const int64_t kblocks = cdiv(kb, kSmallKBlock);
    int64_t splits = cdiv(2 * num_sms, p.grid_x);  // about two CTAs per SM
    splits = splits < 1 ? 1 : (splits > kblocks ? kblocks : splits);
    p.per_split = static_cast<int>(cdiv(kblocks, splits));
    p.splits = static_cast<int>(cdiv(kblocks, p.per_split));
    p.grid_y = p.splits;
    return p;
  }
  p.kind = m <= 64 ? 1 : 2;
  const int bm = p.kind == 1 ? TileCfg<2, 2>::kBM : TileCfg<4, 2>::kBM;
  const int bn = p.kind == 1 ? TileCfg<2, 2>::kBN : TileCfg<4, 2>::kBN;
  p.grid_x = static_cast<int>(cdiv(n, bn));
  p.grid_y = static_cast<int>(cdiv(m, bm));
  const int64_t ctas = static_cast<int64_t>(p.grid_x) * p.grid_y;
  const int64_t ktiles = cdiv(kb, kStageBytesK);
  int64_t splits = 1;
  if (ctas < num_sms) {
    splits = cdiv(num_sms, ctas);
    const int64_t max_splits = ktiles / 8 > 1 ? ktiles / 8 : 1;  // at least 8 stages (1024 codes) per split
    if (splits > max_splits) splits = max_splits;
  }
  p.per_split = static_cast<int>(cdiv(ktiles, splits));
  p.splits = static_cast<int>(cdiv(ktiles, p.per_split));
  return p;
}

bool needs_workspace(const Plan& p, int out_dtype) { return p.splits > 1 && out_dtype != FC_OUT_I32; }

template <int WARPS_M, int WARPS_N, int OUT>
cudaError_t launch_tiled(const Plan& p, const uint8_t* xq, const uint8_t* wq, const Epi& e, int32_t* ws, int m,
                         int n, int kb, cudaStream_t stream) {
  using Cfg = TileCfg<WARPS_M, WARPS_N>;
  auto kernel = gemm_tiled<WARPS_M, WARPS_N, OUT>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  dim3 grid(p.grid_x, p.grid_y, p.splits);
  FC_LAUNCH(kernel, grid, Cfg::kThreads, Cfg::kSmemBytes, stream)(xq, wq, e, ws, m, n, kb, p.per_split);
  return cudaGetLastError();
}

template <int OUT>
cudaError_t run_gemm(const Plan& p, const uint8_t* xq, const uint8_t* wq, const Epi& e, int32_t* ws, int m, int n,
                     int kb, cudaStream_t stream) {
  if (p.splits > 1) {
    cudaError_t err = cudaMemsetAsync(ws, 0, sizeof(int32_t) * static_cast<size_t>(m) * n, stream);
    if (err != cudaSuccess) return err;
  }
  cudaError_t err;
  if (p.kind == 0) {
    dim3 grid(p.grid_x, p.grid_y);
    FC_LAUNCH(gemm_small_m<OUT>, grid, 32 * kSmallWarps, 0, stream)(xq, wq, e, ws, m, n, kb, p.per_split);
    err = cudaGetLastError();
  } else if (p.kind == 1) {
    err = launch_tiled<2, 2, OUT>(p, xq, wq, e, ws, m, n, kb, stream);
  } else {
    err = launch_tiled<4, 2, OUT>(p, xq, wq, e, ws, m, n, kb, stream);
  }
  if (err != cudaSuccess || p.splits == 1 || OUT == FC_OUT_I32) return err;
  const int64_t total = static_cast<int64_t>(m) * n;
  const int blocks = static_cast<int>(total / 256 + 1 < 65535 ? total / 256 + 1 : 65535);
  FC_LAUNCH(epilogue_kernel<OUT>, blocks, 256, 0, stream)(ws, e, m, n);
  return cudaGetLastError();
}

}  // namespace

extern "C" size_t fc_w4a4_gemm_workspace_bytes(int64_t m, int64_t n, int64_t kb, int num_sms, int out_dtype) {
  if (m <= 0 || n <= 0 || kb <= 0) return 0;
  const Plan p = make_plan(m, n, kb, num_sms);
  return needs_workspace(p, out_dtype) ? sizeof(int32_t) * static_cast<size_t>(m) * static_cast<size_t>(n) : 0;
}

extern "C" int fc_w4a4_gemm(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw,
                            const float* bias, void* out, int out_dtype, int64_t m, int64_t n, int64_t kb,
                            void* workspace, int num_sms, void* stream) {
  if (m < 0 || n < 0 || kb <= 0 || kb % 16 != 0 || m > INT32_MAX || n > INT32_MAX || kb > INT32_MAX / 2 ||
      (reinterpret_cast<uintptr_t>(xq) | reinterpret_cast<uintptr_t>(wq)) % 16 != 0 || out == nullptr)
    return FC_ERR_BAD_ARGUMENT;
  if (m == 0 || n == 0) return 0;
  const Plan p = make_plan(m, n, kb, num_sms);
  int32_t* ws = out_dtype == FC_OUT_I32 ? static_cast<int32_t*>(out) : static_cast<int32_t*>(workspace);
  if (needs_workspace(p, out_dtype) && workspace == nullptr) return FC_ERR_BAD_ARGUMENT;
  const Epi e{sx, sw, bias, out};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), kbi = static_cast<int>(kb);
  cudaError_t err;
  switch (out_dtype) {
    case FC_OUT_F32:
      err = run_gemm<FC_OUT_F32>(p, xq, wq, e, ws, mi, ni, kbi, s);
      break;
    case FC_OUT_BF16:
      err = run_gemm<FC_OUT_BF16>(p, xq, wq, e, ws, mi, ni, kbi, s);
      break;
    case FC_OUT_F16:
      err = run_gemm<FC_OUT_F16>(p, xq, wq, e, ws, mi, ni, kbi, s);
      break;
    case FC_OUT_I32:
      err = run_gemm<FC_OUT_I32>(p, xq, wq, e, ws, mi, ni, kbi, s);
      break;
    default:
      return FC_ERR_BAD_ARGUMENT;
  }
  return static_cast<int>(err);
}

extern "C" const char* fc_cuda_error_string(int code) {
  if (code == FC_ERR_BAD_ARGUMENT) return "fair_calib CUDA kernel: argument contract violated";
  if (code == FC_ERR_UNSUPPORTED) return "fair_calib CUDA kernel: unsupported shape for this kernel";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
