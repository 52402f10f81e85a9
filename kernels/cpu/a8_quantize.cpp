// Activation side of the CPU W4A8 / W8A8 layers: per-token symmetric int8 quantization of fp32 rows
// (s = (absmax·clip)/127, q = clamp(rint(x/s), -128, 127), codes stored unpacked), vectorized for the
// instruction set the GEMM uses (AVX-512, AVX2, scalar). Bit-identical to the scalar rule in w4a4_common.h and
// to the reference (fair_calib_hf/ops/reference.py): max|x| is exact in any order, x / s is one IEEE division,
// roundscale / round with _MM_FROUND_TO_NEAREST_INT rounds half to even like nearbyint in the default rounding
// mode, and the clamp and the narrowing to bytes are exact. The fused online transform that feeds it lives in
// w4a4_quantize.cpp (transform_quantize_rows_int8).
// gcc 12 flags _mm512_undefined_*() inside its own intrinsic headers (reductions, roundscale)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../w4a4_common.h"
#include "w4a4_cpu.h"
#include "w4a4_cpu_internal.h"
#include "simd_common.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define FC_AVX2_TARGET __attribute__((target("avx2")))

namespace fair_calib {
namespace {

void quantize_int8_row_scalar(const float* row, int64_t k, float clip, int8_t* codes, float* scale) {
  const float s = symmetric_scale(simd::absmax_scalar(row, k), clip, kQMax8);
  *scale = s;
  for (int64_t j = 0; j < k; ++j) codes[j] = static_cast<int8_t>(quantize_code(row[j], s, kQMin8, kQMax8));
}

FC_AVX512_TARGET void quantize_int8_row_avx512(const float* row, int64_t k, float clip, int8_t* codes,
                                               float* scale) {
  const float s = symmetric_scale(simd::absmax_avx512(row, k), clip, kQMax8);
  *scale = s;
  const __m512 vs = _mm512_set1_ps(s);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(kQMin8)), hi = _mm512_set1_ps(static_cast<float>(kQMax8));
  for (int64_t j = 0; j < k; j += 16) {  // 16 codes per step, the last one masked
    const __mmask16 mask = j + 16 <= k ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (k - j)) - 1);
    const __m512i q = simd::round_clamp_avx512(_mm512_maskz_loadu_ps(mask, row + j), vs, lo, hi);
    _mm_mask_storeu_epi8(codes + j, mask, _mm512_cvtepi32_epi8(q));
  }
}

// 8 int32 codes clamp(rint(p[j] / s), lo, hi).
FC_AVX2_TARGET inline __m256i quantize8_avx2(__m256 vs, __m256 lo, __m256 hi, const float* p) {
  return simd::round_clamp_avx2(_mm256_loadu_ps(p), vs, lo, hi);
}

FC_AVX2_TARGET void quantize_int8_row_avx2(const float* row, int64_t k, float clip, int8_t* codes, float* scale) {
  const float s = symmetric_scale(simd::absmax_avx2(row, k), clip, kQMax8);
  *scale = s;
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(kQMin8)), hi = _mm256_set1_ps(static_cast<float>(kQMax8));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int64_t k32 = k / 32 * 32;
  for (int64_t j = 0; j < k32; j += 32) {  // 32 codes per step; the packs never saturate (codes are clamped)
    const __m256i p01 =
        _mm256_packs_epi32(quantize8_avx2(vs, lo, hi, row + j), quantize8_avx2(vs, lo, hi, row + j + 8));
    const __m256i p23 =
        _mm256_packs_epi32(quantize8_avx2(vs, lo, hi, row + j + 16), quantize8_avx2(vs, lo, hi, row + j + 24));
    // per 128-bit lane: 4 codes of each of the four groups; the dword permutation restores the row order
    const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + j), b);
  }
  for (int64_t j = k32; j < k; ++j) codes[j] = static_cast<int8_t>(quantize_code(row[j], s, kQMin8, kQMax8));
}

}  // namespace

void quantize_int8_row(const float* row, int64_t k, float clip, int8_t* codes, float* scale) {
  const int isa = current_isa_level();
  if (isa >= 2) {
    quantize_int8_row_avx512(row, k, clip, codes, scale);
  } else if (isa == 1) {
    quantize_int8_row_avx2(row, k, clip, codes, scale);
  } else {
    quantize_int8_row_scalar(row, k, clip, codes, scale);
  }
}

void quantize_int8_rows(const float* x, float clip, int8_t* codes, float* scale, int64_t m, int64_t k,
                        int threads) {
  if (threads <= 0) threads = default_cpu_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) quantize_int8_row(x + i * k, k, clip, codes + i * k, scale + i);
}

}  // namespace fair_calib
