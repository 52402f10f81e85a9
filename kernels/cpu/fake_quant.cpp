// Stage II's fake quantizer, fused: per-row symmetric quantize-dequantize with straight-through rounding, forward
// and backward, on fp32 rows [m, k] (fair_calib_hf/calibration/fake_quant.py is the pure-torch definition and
// the reference these kernels are checked against).
//
// Forward, per row i (c = clip[i] or the one clip for every row):
//   m_i = max_j |x_ij|, s0 = (c · m_i) / qmax, s_i = s0 == 0 ? 1 : s0,
//   r = rint(x / s_i) + 0 (round half to even, -0 -> +0), q = clamp(r, qmin, qmax), out = q · s_i.
// Every step is one IEEE operation in the reference's order, so out, s and m are bit-identical to it.
//
// Backward, per row, from the upstream gradient g (the gradient torch's autograd derives for the reference):
//   gu = (g · s) · [q == r],  gs = Σ_j g·q + -(Σ_j gu·(u / s)),  gt1 = (s0 == 0 ? 0 : gs) / qmax,
//   grad_clip_row = gt1 · m,  coef = (gt1 · c) / #{j : |x_j| == m},
//   grad_x = gu / s + coef · ([|x| == m] · sign(x)).
// Only the two row sums are accumulated in another order than torch's sum (16 lanes, lane l summing elements
// l, l+16, ...; then the lanes in order 0..15), identically on every instruction set (AVX-512, AVX2, scalar),
// so results do not depend on the ISA or the thread count (one thread per row). Elementwise steps are the
// reference's, bit for bit (-ffp-contract=off: nothing is contracted into an FMA).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "w4a4_cpu.h"
#include "w4a4_cpu_internal.h"
#include "simd_common.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define FC_AVX2_TARGET __attribute__((target("avx2")))

namespace fair_calib {
namespace {

constexpr int kLanes = 16;

inline float row_scale(float clip, float amax, float qmax, float* s0_out) {
  const float s0 = (clip * amax) / qmax;
  *s0_out = s0;
  return s0 == 0.0f ? 1.0f : s0;
}

// The row's closing arithmetic, shared by every ISA: lanes summed in order, then gt1, grad_clip_row and coef.
inline void close_row(const float* acc1, const float* acc2, float s0, float clip, float amax, float qmax, int64_t hits,
                      float* grad_clip_row, float* coef) {
  float sum1 = 0.0f, sum2 = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum1 += acc1[l];
  for (int l = 0; l < kLanes; ++l) sum2 += acc2[l];
  const float gs = sum1 + -sum2;
  const float gt1 = (s0 == 0.0f ? 0.0f : gs) / qmax;
  if (grad_clip_row != nullptr) *grad_clip_row = gt1 * amax;
  *coef = (gt1 * clip) / static_cast<float>(hits);
}

inline float sign_of(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : v); }  // like torch.sign (0, NaN kept)

// ---- scalar ----

void forward_row_scalar(const float* x, int64_t k, float clip, float qmin, float qmax, float* out, float* scale,
                        float* amax_out) {
  const float amax = simd::absmax_scalar(x, k);
  float s0;
  const float s = row_scale(clip, amax, qmax, &s0);
  for (int64_t j = 0; j < k; ++j) {
    const float r = std::nearbyint(x[j] / s) + 0.0f;
    out[j] = std::min(std::max(r, qmin), qmax) * s;
  }
  *scale = s;
  *amax_out = amax;
}

void backward_row_scalar(const float* g, const float* x, int64_t k, float clip, float s, float amax, float qmin,
                         float qmax, float* grad_x, float* grad_clip_row) {
  float s0;
  row_scale(clip, amax, qmax, &s0);
  float acc1[kLanes] = {}, acc2[kLanes] = {};
  int64_t hits = 0;
  for (int64_t j0 = 0; j0 < k; j0 += kLanes) {
    for (int l = 0; l < kLanes; ++l) {  // lanes past k add +0 (as the masked SIMD loads do)
      const bool valid = j0 + l < k;
      const float xv = valid ? x[j0 + l] : 0.0f, gv = valid ? g[j0 + l] : 0.0f;
      const float u = xv / s;
      const float r = std::nearbyint(u) + 0.0f;
      const float q = std::min(std::max(r, qmin), qmax);
      const float gu = (gv * s) * (q == r ? 1.0f : 0.0f);
      acc1[l] += gv * q;
      acc2[l] += gu * (u / s);
      hits += valid && std::fabs(xv) == amax;
    }
  }
  float coef;
  close_row(acc1, acc2, s0, clip, amax, qmax, hits, grad_clip_row, &coef);
  if (grad_x == nullptr) return;
  for (int64_t j = 0; j < k; ++j) {
    const float u = x[j] / s;
    const float r = std::nearbyint(u) + 0.0f;
    const float q = std::min(std::max(r, qmin), qmax);
    const float gu = (g[j] * s) * (q == r ? 1.0f : 0.0f);
    const float hs = (std::fabs(x[j]) == amax ? 1.0f : 0.0f) * sign_of(x[j]);
    grad_x[j] = gu / s + coef * hs;
  }
}

// ---- AVX-512 ----

FC_AVX512_TARGET inline __mmask16 tail_mask(int64_t j, int64_t k) {
  return j + 16 <= k ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (k - j)) - 1);
}

// q = clamp(r, qmin, qmax) with r = rint(u) + 0; NaN propagates like torch.clamp (max/min return their second
// operand when either is NaN).
FC_AVX512_TARGET inline __m512 round_avx512(__m512 u) {
  return _mm512_add_ps(_mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm512_setzero_ps());
}

FC_AVX512_TARGET inline __m512 clamp_avx512(__m512 r, __m512 lo, __m512 hi) {
  return _mm512_min_ps(hi, _mm512_max_ps(lo, r));
}

FC_AVX512_TARGET void forward_row_avx512(const float* x, int64_t k, float clip, float qmin, float qmax, float* out,
                                         float* scale, float* amax_out) {
  const float amax = simd::absmax_avx512(x, k);
  float s0;
  const float s = row_scale(clip, amax, qmax, &s0);
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
  for (int64_t j = 0; j < k; j += 16) {
    const __mmask16 mask = tail_mask(j, k);
    const __m512 r = round_avx512(_mm512_div_ps(_mm512_maskz_loadu_ps(mask, x + j), vs));
    _mm512_mask_storeu_ps(out + j, mask, _mm512_mul_ps(clamp_avx512(r, lo, hi), vs));
  }
  *scale = s;
  *amax_out = amax;
}

FC_AVX512_TARGET inline __m512 sign_avx512(__m512 v) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 out = v;  // 0 and NaN kept
  out = _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f));
  return _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
}

// u = x / s and gu = (g·s)·[q == r] of 16 lanes: the straight-through terms both backward passes need.
FC_AVX512_TARGET inline __m512 ste_terms_avx512(__m512 xv, __m512 gv, __m512 vs, __m512 lo, __m512 hi, __m512* u_out,
                                                __m512* q_out) {
  const __m512 u = _mm512_div_ps(xv, vs);
  const __m512 r = round_avx512(u);
  const __m512 q = clamp_avx512(r, lo, hi);
  const __m512 in_range = _mm512_mask_mov_ps(_mm512_setzero_ps(), _mm512_cmp_ps_mask(q, r, _CMP_EQ_OQ), _mm512_set1_ps(1.0f));
  *u_out = u;
  *q_out = q;
  return _mm512_mul_ps(_mm512_mul_ps(gv, vs), in_range);
}

FC_AVX512_TARGET void backward_row_avx512(const float* g, const float* x, int64_t k, float clip, float s, float amax,
                                          float qmin, float qmax, float* grad_x, float* grad_clip_row) {
  float s0;
  row_scale(clip, amax, qmax, &s0);
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps(), vmax = _mm512_set1_ps(amax);
  __m512 acc1 = zero, acc2 = zero;
  int64_t hits = 0;
  for (int64_t j = 0; j < k; j += 16) {
    const __mmask16 mask = tail_mask(j, k);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + j), gv = _mm512_maskz_loadu_ps(mask, g + j);
    __m512 u, q;
    const __m512 gu = ste_terms_avx512(xv, gv, vs, lo, hi, &u, &q);
    acc1 = _mm512_add_ps(acc1, _mm512_mul_ps(gv, q));
    acc2 = _mm512_add_ps(acc2, _mm512_mul_ps(gu, _mm512_div_ps(u, vs)));
    hits += __builtin_popcount(_mm512_mask_cmp_ps_mask(mask, _mm512_abs_ps(xv), vmax, _CMP_EQ_OQ));
  }
  alignas(64) float lanes1[kLanes], lanes2[kLanes];
  _mm512_store_ps(lanes1, acc1);
  _mm512_store_ps(lanes2, acc2);
  float coef;
  close_row(lanes1, lanes2, s0, clip, amax, qmax, hits, grad_clip_row, &coef);
  if (grad_x == nullptr) return;
  const __m512 vcoef = _mm512_set1_ps(coef);
  for (int64_t j = 0; j < k; j += 16) {
    const __mmask16 mask = tail_mask(j, k);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + j), gv = _mm512_maskz_loadu_ps(mask, g + j);
    __m512 u, q;
    const __m512 gu = ste_terms_avx512(xv, gv, vs, lo, hi, &u, &q);
    const __m512 hit = _mm512_mask_mov_ps(zero, _mm512_cmp_ps_mask(_mm512_abs_ps(xv), vmax, _CMP_EQ_OQ), one);
    const __m512 hs = _mm512_mul_ps(hit, sign_avx512(xv));
    _mm512_mask_storeu_ps(grad_x + j, mask, _mm512_add_ps(_mm512_div_ps(gu, vs), _mm512_mul_ps(vcoef, hs)));
  }
}

// ---- AVX2: the same 16 lanes as two 8-wide halves ----

FC_AVX2_TARGET inline __m256i half_mask(int64_t j, int64_t k) {
  const int64_t n = std::max<int64_t>(0, std::min<int64_t>(8, k - j));
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

FC_AVX2_TARGET inline __m256 round_avx2(__m256 u) {
  return _mm256_add_ps(_mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm256_setzero_ps());
}

FC_AVX2_TARGET inline __m256 clamp_avx2(__m256 r, __m256 lo, __m256 hi) {
  return _mm256_min_ps(hi, _mm256_max_ps(lo, r));
}

FC_AVX2_TARGET inline __m256 abs_avx2(__m256 v) {
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
}

FC_AVX2_TARGET inline __m256 sign_avx2(__m256 v) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 out = _mm256_blendv_ps(v, _mm256_set1_ps(1.0f), _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
  return _mm256_blendv_ps(out, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
}

FC_AVX2_TARGET void forward_row_avx2(const float* x, int64_t k, float clip, float qmin, float qmax, float* out,
                                     float* scale, float* amax_out) {
  const float amax = simd::absmax_avx2(x, k);
  float s0;
  const float s = row_scale(clip, amax, qmax, &s0);
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
  for (int64_t j = 0; j < k; j += 8) {
    const __m256i mask = half_mask(j, k);
    const __m256 r = round_avx2(_mm256_div_ps(_mm256_maskload_ps(x + j, mask), vs));
    _mm256_maskstore_ps(out + j, mask, _mm256_mul_ps(clamp_avx2(r, lo, hi), vs));
  }
  *scale = s;
  *amax_out = amax;
}

// u = x / s and gu = (g·s)·[q == r] of 8 lanes: the straight-through terms both backward passes need.
FC_AVX2_TARGET inline __m256 ste_terms_avx2(__m256 xv, __m256 gv, __m256 vs, __m256 lo, __m256 hi, __m256* u_out,
                                            __m256* q_out) {
  const __m256 u = _mm256_div_ps(xv, vs);
  const __m256 r = round_avx2(u);
  const __m256 q = clamp_avx2(r, lo, hi);
  *u_out = u;
  *q_out = q;
  return _mm256_mul_ps(_mm256_mul_ps(gv, vs), _mm256_and_ps(_mm256_cmp_ps(q, r, _CMP_EQ_OQ), _mm256_set1_ps(1.0f)));
}

FC_AVX2_TARGET void backward_row_avx2(const float* g, const float* x, int64_t k, float clip, float s, float amax,
                                      float qmin, float qmax, float* grad_x, float* grad_clip_row) {
  float s0;
  row_scale(clip, amax, qmax, &s0);
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps(), vmax = _mm256_set1_ps(amax);
  __m256 acc1[2] = {zero, zero}, acc2[2] = {zero, zero};
  int64_t hits = 0;
  for (int64_t j0 = 0; j0 < k; j0 += 16) {
    for (int h = 0; h < 2; ++h) {  // half h holds lanes 8h .. 8h+7 (+0 past k, like the masked AVX-512 loads)
      const int64_t j = j0 + 8 * h;
      const __m256i mask = half_mask(j, k);
      const __m256 xv = _mm256_maskload_ps(x + j, mask), gv = _mm256_maskload_ps(g + j, mask);
      __m256 u, q;
      const __m256 gu = ste_terms_avx2(xv, gv, vs, lo, hi, &u, &q);
      acc1[h] = _mm256_add_ps(acc1[h], _mm256_mul_ps(gv, q));
      acc2[h] = _mm256_add_ps(acc2[h], _mm256_mul_ps(gu, _mm256_div_ps(u, vs)));
      const __m256 hit = _mm256_and_ps(_mm256_cmp_ps(abs_avx2(xv), vmax, _CMP_EQ_OQ), _mm256_castsi256_ps(mask));
      hits += __builtin_popcount(_mm256_movemask_ps(hit));
    }
  }
  alignas(32) float lanes1[kLanes], lanes2[kLanes];
  _mm256_store_ps(lanes1, acc1[0]);
  _mm256_store_ps(lanes1 + 8, acc1[1]);
  _mm256_store_ps(lanes2, acc2[0]);
  _mm256_store_ps(lanes2 + 8, acc2[1]);
  float coef;
  close_row(lanes1, lanes2, s0, clip, amax, qmax, hits, grad_clip_row, &coef);
  if (grad_x == nullptr) return;
  const __m256 vcoef = _mm256_set1_ps(coef);
  for (int64_t j = 0; j < k; j += 8) {
    const __m256i mask = half_mask(j, k);
    const __m256 xv = _mm256_maskload_ps(x + j, mask), gv = _mm256_maskload_ps(g + j, mask);
    __m256 u, q;
    const __m256 gu = ste_terms_avx2(xv, gv, vs, lo, hi, &u, &q);
    const __m256 hit = _mm256_and_ps(_mm256_cmp_ps(abs_avx2(xv), vmax, _CMP_EQ_OQ), one);
    const __m256 hs = _mm256_mul_ps(hit, sign_avx2(xv));
    _mm256_maskstore_ps(grad_x + j, mask, _mm256_add_ps(_mm256_div_ps(gu, vs), _mm256_mul_ps(vcoef, hs)));
  }
}

}  // namespace

void fake_quant_rows_forward(const float* x, const float* clip, int64_t clip_stride, float* out, float* scale,
                             float* amax, int64_t m, int64_t k, int qmin, int qmax, int threads) {
  if (threads <= 0) threads = default_cpu_threads();
  const int isa = current_isa_level();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float c = clip[i * clip_stride];
    if (isa >= 2) {
      forward_row_avx512(x + i * k, k, c, lo, hi, out + i * k, scale + i, amax + i);
    } else if (isa == 1) {
      forward_row_avx2(x + i * k, k, c, lo, hi, out + i * k, scale + i, amax + i);
    } else {
      forward_row_scalar(x + i * k, k, c, lo, hi, out + i * k, scale + i, amax + i);
    }
  }
}

void fake_quant_rows_backward(const float* g, const float* x, const float* clip, int64_t clip_stride,
                              const float* scale, const float* amax, float* grad_x, float* grad_clip_row, int64_t m,
                              int64_t k, int qmin, int qmax, int threads) {
  if (threads <= 0) threads = default_cpu_threads();
  const int isa = current_isa_level();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float c = clip[i * clip_stride];
    float* gx = grad_x != nullptr ? grad_x + i * k : nullptr;
    float* gc = grad_clip_row != nullptr ? grad_clip_row + i : nullptr;
    if (isa >= 2) {
      backward_row_avx512(g + i * k, x + i * k, k, c, scale[i], amax[i], lo, hi, gx, gc);
    } else if (isa == 1) {
      backward_row_avx2(g + i * k, x + i * k, k, c, scale[i], amax[i], lo, hi, gx, gc);
    } else {
      backward_row_scalar(g + i * k, x + i * k, k, c, scale[i], amax[i], lo, hi, gx, gc);
    }
  }
}

}  // namespace fair_calib
