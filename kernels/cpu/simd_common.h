// Small SIMD pieces shared by the CPU kernel translation units (the int4 and int8 row quantizers, the AVX-512
// dot-product tiles). Everything is always_inline with the narrowest target attribute it needs, so each caller
// (compiled with its own, wider function-level target) gets the same code as if written in place, and the
// translation units still build with the default flags.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "w4a4_cpu_internal.h"

#define FC_INLINE_AVX2 __attribute__((target("avx2"), always_inline)) inline
#define FC_INLINE_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define FC_INLINE_AVX512BW __attribute__((target("avx512f,avx512bw"), always_inline)) inline

namespace fair_calib {
namespace simd {

// max |row[j]| over the k values of a row (exact in any order).
inline float absmax_scalar(const float* row, int64_t k) {
  float amax = 0.0f;
  for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(row[j]));
  return amax;
}

FC_INLINE_AVX2 float absmax_avx2(const float* row, int64_t k) {
  const int64_t kv = k / 8 * 8;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  for (int64_t j = 0; j < kv; j += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(row + j), absmask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0.0f;
  for (float v : lanes) amax = std::max(amax, v);
  for (int64_t j = kv; j < k; ++j) amax = std::max(amax, std::fabs(row[j]));
  return amax;
}

FC_INLINE_AVX512 float absmax_avx512(const float* row, int64_t k) {
  const int64_t kv = k / 16 * 16;
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t j = 0; j < kv; j += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + j)));
  float amax = _mm512_reduce_max_ps(vmax);
  for (int64_t j = kv; j < k; ++j) amax = std::max(amax, std::fabs(row[j]));
  return amax;
}

// The codes clamp(rint(v / s), lo, hi) as int32 lanes (vs, lo, hi broadcast): the scalar rule of w4a4_common.h
// (quantize_code), bit for bit: one IEEE division, round half to even, an exact clamp.
FC_INLINE_AVX2 __m256i round_clamp_avx2(__m256 v, __m256 vs, __m256 lo, __m256 hi) {
  const __m256 q = _mm256_round_ps(_mm256_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
}

FC_INLINE_AVX512 __m512i round_clamp_avx512(__m512 v, __m512 vs, __m512 lo, __m512 hi) {
  const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
}

// The byte mask of a 64-byte load with `left` bytes still to read (left > 0).
FC_INLINE_AVX512BW __mmask64 tail_mask64(int64_t left) { return left >= 64 ? ~0ULL : (1ULL << left) - 1; }

// The same for a load that may start past the end (left <= 0: no byte).
FC_INLINE_AVX512BW __mmask64 load_mask64(int64_t left) {
  return left >= 64 ? ~0ULL : (left <= 0 ? 0ULL : (1ULL << left) - 1);
}

// The rows of a dot-product tile: rows[r] = base + min(first + r, last) * stride (rows past the last repeat it;
// their results are never stored, see store_tile).
template <typename T, int R>
inline void tile_rows(const T* (&rows)[R], const T* base, int64_t first, int64_t last, int64_t stride) {
  for (int r = 0; r < R; ++r) rows[r] = base + std::min<int64_t>(first + r, last) * stride;
}

template <int TT, int DN>
FC_INLINE_AVX512 void zero_tile(__m512i (&c)[TT][DN]) {
#pragma GCC unroll 4
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
    for (int j = 0; j < DN; ++j) c[t][j] = _mm512_setzero_si512();
}

// The end of a dot-product tile of tokens i0 .. i0+TT-1 × channels n0 .. n0+DN-1: each accumulator inside
// [m, n] reduced across its 16 lanes, made exact by exact(i, lane_sum) (the weight offset removed), and stored
// through ep.
template <int TT, int DN, class Exact>
FC_INLINE_AVX512 void store_tile(const __m512i (&c)[TT][DN], int64_t m, int64_t i0, int64_t n, int64_t n0,
                                 const GemmOut& ep, Exact exact) {
  const int64_t tn = std::min<int64_t>(TT, m - i0), jn = std::min<int64_t>(DN, n - n0);
#pragma GCC unroll 4
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 4
    for (int j = 0; j < DN; ++j) {
      if (t >= tn || j >= jn) continue;
      const int64_t i = i0 + t;
      ep.store(i, n0 + j, n, exact(i, _mm512_reduce_add_epi32(c[t][j])));
    }
  }
}

}  // namespace simd
}  // namespace fair_calib
