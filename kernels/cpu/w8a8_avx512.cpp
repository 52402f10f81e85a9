// AVX-512 VNNI W8A8 GEMM for few tokens: int8 activations [m, k] × int8 weights [n, k], exact int32, the fp32
// epilogue fused. PyTorch's own torch._int_mm (oneDNN's s8 GEMM) is faster from a few dozen
// tokens on and is what fair_calib_hf/ops/int8_cpu.py runs there; at a few tokens it is slow (its packing and
// blocking do not pay), and this kernel, which streams the weight rows once, replaces it.
//
// Dot products straight on the weight rows (no regrouping): per 64 codes, each of kDn weight rows gives one vector
// made unsigned by xor 0x80 (= w + 128 in [0, 255]), and each of up to kDt tokens one vector of its signed codes;
// vpdpbusd adds 4 products per int32 lane, and each (channel, token) accumulator is reduced across its 16 lanes
// once at the end of K. The offset is removed exactly: sum (w + 128) x = sum w x + 128 sum x (sum x per token,
// computed once per call). The K tail is read with masked loads: padding activation codes are 0, so their products
// are 0 whatever the weight. Lanes may wrap past 2^31 in between (vpdpbusd wraps, it does not saturate), but
// int32 arithmetic is exact modulo 2^32, so the result is exact whenever the true sum fits an int32 (K ≤ 2^17).
// Compiled with function-level target attributes only (the extension still loads on AVX2-only CPUs); called
// only after a runtime check (w4a4_cpu.cpp, w8a8_gemm_f32).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "simd_common.h"
#include "w4a4_cpu_internal.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace fair_calib {
namespace {

constexpr int kDn = 4;  // channels per register tile
constexpr int kDt = 4;  // tokens per register tile (at most): 16 accumulators + 4 weight vectors
constexpr int64_t kPrefetch = 1024;

FC_AVX512_TARGET void row_sums(const int8_t* xq, int64_t m, int64_t k, int32_t* xsum) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = 0; i < m; ++i) {
    __m512i sum = _mm512_setzero_si512();
    for (int64_t j = 0; j < k; j += 64)
      sum = _mm512_dpbusd_epi32(sum, ones, _mm512_maskz_loadu_epi8(simd::tail_mask64(k - j), xq + i * k + j));
    xsum[i] = _mm512_reduce_add_epi32(sum);
  }
}

template <int TT>
FC_AVX512_TARGET void dot_tile(const int8_t* xq, const int32_t* xsum, int64_t m, int64_t i0, const int8_t* wq,
                               int64_t n, int64_t n0, int64_t k, const GemmOut& ep) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* wr[kDn];
  const int8_t* xr[TT];
  simd::tile_rows(wr, wq, n0, n - 1, k);
  simd::tile_rows(xr, xq, i0, m - 1, k);
  __m512i c[TT][kDn];
  simd::zero_tile(c);
  for (int64_t p = 0; p < k; p += 64) {
    const __mmask64 mask = simd::tail_mask64(k - p);
    __m512i w[kDn];
#pragma GCC unroll 4
    for (int j = 0; j < kDn; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(wr[j] + p + kPrefetch), _MM_HINT_T0);
      w[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, wr[j] + p), flip);  // w + 128, unsigned
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      const __m512i x = _mm512_maskz_loadu_epi8(mask, xr[t] + p);  // padding: code 0
#pragma GCC unroll 4
      for (int j = 0; j < kDn; ++j) c[t][j] = _mm512_dpbusd_epi32(c[t][j], w[j], x);
    }
  }
  simd::store_tile(c, m, i0, n, n0, ep, [xsum](int64_t i, int32_t sum) {
    // modulo 2^32, exact (see above)
    return static_cast<int32_t>(static_cast<uint32_t>(sum) - 128u * static_cast<uint32_t>(xsum[i]));
  });
}

}  // namespace

FC_AVX512_TARGET void gemm_w8a8_avx512vnni(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k,
                                           int threads, const GemmOut& ep) {
  if (m == 0 || n == 0) return;
  static thread_local std::vector<int32_t> xsum_buf;
  int32_t* xsum = grow_buffer(xsum_buf, static_cast<size_t>(m));
  row_sums(xq, m, k, xsum);
  const int64_t strips = (n + kDn - 1) / kDn;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t s = 0; s < strips; ++s) {
    for (int64_t i0 = 0; i0 < m; i0 += kDt) {
      switch (std::min<int64_t>(kDt, m - i0)) {
        case 1: dot_tile<1>(xq, xsum, m, i0, wq, n, s * kDn, k, ep); break;
        case 2: dot_tile<2>(xq, xsum, m, i0, wq, n, s * kDn, k, ep); break;
        case 3: dot_tile<3>(xq, xsum, m, i0, wq, n, s * kDn, k, ep); break;
        default: dot_tile<kDt>(xq, xsum, m, i0, wq, n, s * kDn, k, ep);
      }
    }
  }
}

}  // namespace fair_calib
