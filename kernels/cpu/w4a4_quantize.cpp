// Activation side of the CPU W4A4 layer: per-token int4 quantization and packing, and the fused online
// Kronecker transform + quantization (int4 for W4A4, int8 for W4A8 / W8A8: the int8 row quantizer is in
// a8_quantize.cpp), one token at a time with everything in cache:
//
//   X = row reshaped row-major to [a, b] (times diag, if any);  T = X · R;  Z = Lᵀ · T;  quantize vec(Z).
//
// Each token costs 2·a·b·(a + b) FLOP; the two small fp32 GEMMs use a register-tiled micro-kernel (AVX-512:
// 6 rows × 64 columns, AVX2: 4 rows × 16 columns, FMA), the columns' tail with masked loads and stores.
// Tokens are split over the threads. The sums run in another order than torch's matmul (the reference), so
// the codes may differ from the reference's by one step at near rounding ties and the scales by fp32
// rounding: the tolerance is stated in fair_calib_hf/ops/reference.py and checked by
// fair_calib_hf/ops/exactness.py.
// gcc 12 flags _mm512_undefined_*() inside its own intrinsic headers (reductions, roundscale)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../w4a4_common.h"
#include "w4a4_cpu.h"
#include "w4a4_cpu_internal.h"
#include "simd_common.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw")))
#define FC_AVX2_TARGET __attribute__((target("avx2,fma")))

namespace fair_calib {
namespace {

// C[i, j] = sum_p A(i, p) · B[p, j] for i < rows, j < cols, with A(i, p) = A[i * sai + p * sap] and B, C
// row-major with leading dimension cols. Scalar version (the "scalar" ISA).
void small_gemm_scalar(const float* A, int64_t sai, int64_t sap, const float* B, float* C, int64_t rows,
                       int64_t depth, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    float* c = C + i * cols;
    std::fill(c, c + cols, 0.0f);
    for (int64_t p = 0; p < depth; ++p) {
      const float av = A[i * sai + p * sap];
      const float* b = B + p * cols;
      for (int64_t j = 0; j < cols; ++j) c[j] += av * b[j];
    }
  }
}

template <int RB, int NV>
FC_AVX512_TARGET void tile512(const float* A, int64_t sai, int64_t sap, const float* B, float* C, int64_t depth,
                              int64_t cols, __mmask16 last) {
  // fully unrolled (pragmas): without them gcc 12 keeps acc[][] on the stack and stores it every iteration
  __m512 acc[RB][NV];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < depth; ++p) {
    __m512 bv[NV];
    const float* b = B + p * cols;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const __m512 av = _mm512_set1_ps(A[r * sai + p * sap]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (v == NV - 1) {
        _mm512_mask_storeu_ps(C + r * cols + 16 * v, last, acc[r][v]);
      } else {
        _mm512_storeu_ps(C + r * cols + 16 * v, acc[r][v]);
      }
    }
}

using Tile512 = void (*)(const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t, __mmask16);

constexpr int kRows512 = 6;  // rows per AVX-512 tile: 6 × 4 vectors = 24 accumulators of 32 registers

template <int RB>
constexpr Tile512 tile512_row[4] = {tile512<RB, 1>, tile512<RB, 2>, tile512<RB, 3>, tile512<RB, 4>};

FC_AVX512_TARGET void small_gemm_avx512(const float* A, int64_t sai, int64_t sap, const float* B, float* C,
                                        int64_t rows, int64_t depth, int64_t cols) {
  static const Tile512* const table[kRows512] = {tile512_row<1>, tile512_row<2>, tile512_row<3>,
                                                  tile512_row<4>, tile512_row<5>, tile512_row<6>};
  for (int64_t j0 = 0; j0 < cols; j0 += 64) {
    const int64_t left_cols = std::min<int64_t>(64, cols - j0);
    const int nv = static_cast<int>((left_cols + 15) / 16);
    const int tail = static_cast<int>(left_cols - 16 * (nv - 1));  // 1..16 columns in the last vector
    const __mmask16 last = static_cast<__mmask16>(tail == 16 ? 0xFFFF : (1u << tail) - 1);
    for (int64_t i0 = 0; i0 < rows; i0 += kRows512) {
      const int rb = static_cast<int>(std::min<int64_t>(kRows512, rows - i0));
      table[rb - 1][nv - 1](A + i0 * sai, sai, sap, B + j0, C + i0 * cols + j0, depth, cols, last);
    }
  }
}

template <int RB, int NV>
FC_AVX2_TARGET void tile256(const float* A, int64_t sai, int64_t sap, const float* B, float* C, int64_t depth,
                            int64_t cols, __m256i last) {
  __m256 acc[RB][NV];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t p = 0; p < depth; ++p) {
    __m256 bv[NV];
    const float* b = B + p * cols;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = v == NV - 1 ? _mm256_maskload_ps(b + 8 * v, last) : _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const __m256 av = _mm256_broadcast_ss(A + r * sai + p * sap);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      if (v == NV - 1) {
        _mm256_maskstore_ps(C + r * cols + 8 * v, last, acc[r][v]);
      } else {
        _mm256_storeu_ps(C + r * cols + 8 * v, acc[r][v]);
      }
    }
}

using Tile256 = void (*)(const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t, __m256i);

template <int RB>
constexpr Tile256 tile256_row[2] = {tile256<RB, 1>, tile256<RB, 2>};

FC_AVX2_TARGET void small_gemm_avx2(const float* A, int64_t sai, int64_t sap, const float* B, float* C,
                                    int64_t rows, int64_t depth, int64_t cols) {
  static const Tile256* const table[4] = {tile256_row<1>, tile256_row<2>, tile256_row<3>, tile256_row<4>};
  for (int64_t j0 = 0; j0 < cols; j0 += 16) {
    const int64_t left_cols = std::min<int64_t>(16, cols - j0);
    const int nv = static_cast<int>((left_cols + 7) / 8);
    const int tail = static_cast<int>(left_cols - 8 * (nv - 1));  // 1..8 columns in the last vector
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lanes);
    for (int64_t i0 = 0; i0 < rows; i0 += 4) {
      const int rb = static_cast<int>(std::min<int64_t>(4, rows - i0));
      table[rb - 1][nv - 1](A + i0 * sai, sai, sap, B + j0, C + i0 * cols + j0, depth, cols, last);
    }
  }
}

// Quantization of one row, vectorized. Bit-identical to the scalar rule (w4a4_common.h): max|x| is exact in
// any order; x / s is an IEEE division in both; roundscale / round with _MM_FROUND_TO_NEAREST_INT is
// round-half-to-even like nearbyint in the default rounding mode; the clamp and the nibble packing are exact.
void quantize_row_scalar(const float* row, int64_t k, float clip, uint8_t* packed, float* scale) {
  const int64_t kb = (k + 1) / 2;
  const float s = symmetric_scale(simd::absmax_scalar(row, k), clip);
  *scale = s;
  for (int64_t j = 0; j < kb; ++j) {
    const int lo = quantize_code(row[2 * j], s);
    const int hi = 2 * j + 1 < k ? quantize_code(row[2 * j + 1], s) : 0;
    packed[j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
  }
}

FC_AVX512_TARGET void quantize_row_avx512(const float* row, int64_t k, float clip, uint8_t* packed,
                                          float* scale) {
  const int64_t kv = k / 16 * 16;
  const float s = symmetric_scale(simd::absmax_avx512(row, k), clip);
  *scale = s;
  const __m512 vs = _mm512_set1_ps(s);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(kQMin)), hi = _mm512_set1_ps(static_cast<float>(kQMax));
  const __m512i nib = _mm512_set1_epi32(0x0F);
  for (int64_t j = 0; j < kv; j += 16) {  // 16 codes -> 8 bytes
    const __m512i q = simd::round_clamp_avx512(_mm512_loadu_ps(row + j), vs, lo, hi);
    const __m512i c = _mm512_and_si512(q, nib);  // code 2t in lane 2t, 2t+1 in 2t+1
    const __m512i pair = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed + j / 2), _mm512_cvtepi64_epi8(pair));
  }
  for (int64_t j = kv / 2; j < (k + 1) / 2; ++j) {
    const int l = quantize_code(row[2 * j], s);
    const int h = 2 * j + 1 < k ? quantize_code(row[2 * j + 1], s) : 0;
    packed[j] = static_cast<uint8_t>((l & 0x0F) | ((h & 0x0F) << 4));
  }
}

FC_AVX2_TARGET void quantize_row_avx2(const float* row, int64_t k, float clip, uint8_t* packed, float* scale) {
  const int64_t kv = k / 8 * 8;
  const float s = symmetric_scale(simd::absmax_avx2(row, k), clip);
  *scale = s;
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(kQMin)), hi = _mm256_set1_ps(static_cast<float>(kQMax));
  const __m256i nib = _mm256_set1_epi32(0x0F);
  // bytes 0 and 8 of each 128-bit lane hold the packed pairs after the 64-bit combine below
  const __m256i gather = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int64_t j = 0; j < kv; j += 8) {  // 8 codes -> 4 bytes
    const __m256i c = _mm256_and_si256(simd::round_clamp_avx2(_mm256_loadu_ps(row + j), vs, lo, hi), nib);
    const __m256i pair = _mm256_shuffle_epi8(_mm256_or_si256(c, _mm256_srli_epi64(c, 28)),
                                             gather);
    const uint32_t bytes = static_cast<uint32_t>(_mm256_extract_epi16(pair, 0)) |
                           (static_cast<uint32_t>(_mm256_extract_epi16(pair, 8)) << 16);
    std::memcpy(packed + j / 2, &bytes, 4);
  }
  for (int64_t j = kv / 2; j < (k + 1) / 2; ++j) {
    const int l = quantize_code(row[2 * j], s);
    const int h = 2 * j + 1 < k ? quantize_code(row[2 * j + 1], s) : 0;
    packed[j] = static_cast<uint8_t>((l & 0x0F) | ((h & 0x0F) << 4));
  }
}

using SmallGemm = void (*)(const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t, int64_t);

}  // namespace

void quantize_pack_row(const float* row, int64_t k, float clip, uint8_t* packed, float* scale) {
  const int isa = current_isa_level();
  if (isa >= 2) {
    quantize_row_avx512(row, k, clip, packed, scale);
  } else if (isa == 1) {
    quantize_row_avx2(row, k, clip, packed, scale);
  } else {
    quantize_row_scalar(row, k, clip, packed, scale);
  }
}

namespace {

// The fused transform for every row of x, then quantize(i, z) on the transformed row z (k fp32 values).
template <class Quantize>
void transform_rows(const float* x, int64_t m, int64_t a, int64_t b, const float* left, const float* right,
                    const float* diag, int threads, Quantize quantize) {
  if (threads <= 0) threads = default_cpu_threads();
  const int64_t k = a * b;
  const int isa = current_isa_level();
  const SmallGemm gemm = isa >= 2 ? small_gemm_avx512 : (isa == 1 ? small_gemm_avx2 : small_gemm_scalar);
#pragma omp parallel num_threads(threads)
  {
    // 64-byte aligned rows (whole zmm loads and stores never split a cache line when b % 16 == 0)
    const int64_t kpad = (k + 15) / 16 * 16;
    std::vector<float> buf(3 * kpad + 16);
    float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
    float *xd = base, *t = base + kpad, *z = base + 2 * kpad;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      const float* row = x + i * k;
      if (diag != nullptr) {
        for (int64_t j = 0; j < k; ++j) xd[j] = row[j] * diag[j];
        row = xd;
      }
      gemm(row, b, 1, right, t, a, b, b);     // T = X · R       (A(i, p) = X[i, p])
      gemm(left, 1, a, t, z, a, a, b);  // Z = Lᵀ · T      (A(i, p) = L[p, i])
      quantize(i, z);
    }
  }
}

}  // namespace

void transform_quantize_rows(const float* x, int64_t m, int64_t a, int64_t b, const float* left,
                             const float* right, const float* diag, float clip, uint8_t* packed, float* scale,
                             int threads) {
  const int64_t k = a * b, kb = (k + 1) / 2;
  transform_rows(x, m, a, b, left, right, diag, threads,
                 [=](int64_t i, const float* z) { quantize_pack_row(z, k, clip, packed + i * kb, scale + i); });
}

void transform_quantize_rows_int8(const float* x, int64_t m, int64_t a, int64_t b, const float* left,
                                  const float* right, const float* diag, float clip, int8_t* codes, float* scale,
                                  int threads) {
  const int64_t k = a * b;
  transform_rows(x, m, a, b, left, right, diag, threads,
                 [=](int64_t i, const float* z) { quantize_int8_row(z, k, clip, codes + i * k, scale + i); });
}

}  // namespace fair_calib
