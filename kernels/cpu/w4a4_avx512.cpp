// AVX-512 VNNI int4 GEMM (vpdpbusd). Compiled with function-level target attributes only, so this
// translation unit builds with the default flags and the extension still loads on AVX2-only CPUs; it is
// called only after a runtime check (w4a4_cpu.cpp).
//
// Exactness. vpdpbusd multiplies unsigned bytes by signed bytes and adds groups of four products straight
// into int32 lanes (no int16 stage, no saturation in the non-"s" form). Weights are the unsigned operand,
// offset by 8 (nibble ^ 0x08 = w + 8 in [0, 15]); activations are signed via a 16-entry shuffle. The offset
// is removed exactly: sum (w + 8) a = sum w a + 8 sum a, with sum a taken over the whole row. The K tail is
// read with a byte mask: masked-off bytes are 0 for both operands, so the activation code is 0 and the
// product is 0. Low and high nibbles pair up directly because both operands use the same packing.
// gcc 12 flags _mm512_undefined_epi32() inside its own intrinsic headers (_mm512_reduce_add_epi32)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "../w4a4_common.h"
#include "w4a4_cpu_internal.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace fair_calib {
namespace {

constexpr int64_t kChunk = 64;   // bytes per zmm (128 codes)
constexpr int64_t kNBlock = 4;   // output channels per register block
constexpr int64_t kMBlock = 4;   // tokens per register block (16 accumulators + 8 activation vectors)
constexpr int64_t kMTile = 64;   // tokens per cache tile

FC_AVX512_TARGET inline __m512i load_bytes(const uint8_t* p, int64_t k, int64_t kb) {
  if (k + kChunk <= kb) return _mm512_loadu_si512(reinterpret_cast<const void*>(p + k));
  const __mmask64 mask = (1ULL << (kb - k)) - 1;  // kb - k in [1, 63]
  return _mm512_maskz_loadu_epi8(mask, p + k);
}

// Unpacks row ``src`` (kb packed bytes) into ``dst``: per 64-byte chunk c, dst[128c .. 128c+63] holds the low
// nibbles' values and dst[128c+64 .. 128c+127] the high nibbles' values, as signed codes (activations) or
// codes + 8 (weights, the unsigned operand); bytes past kb are 0. ``dst`` has 2 * kpad bytes, kpad = kb
// rounded up to 64.
FC_AVX512_TARGET inline void unpack_row(const uint8_t* src, int64_t kb, uint8_t* dst, bool weight) {
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i offset = _mm512_set1_epi8(0x08);
  for (int64_t k = 0, c = 0; k < kb; k += kChunk, ++c) {
    const __m512i b = load_bytes(src, k, kb);
    __m512i lo = _mm512_and_si512(b, low4);
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), low4);
    if (weight) {
      lo = _mm512_xor_si512(lo, offset);
      hi = _mm512_xor_si512(hi, offset);
      if (k + kChunk > kb) {  // keep the padding 0 (the activation side is 0 there anyway)
        const __mmask64 mask = (1ULL << (kb - k)) - 1;
        lo = _mm512_maskz_mov_epi8(mask, lo);
        hi = _mm512_maskz_mov_epi8(mask, hi);
      }
    } else {
      lo = _mm512_shuffle_epi8(lut, lo);  // masked-off bytes are code 0 -> value 0
      hi = _mm512_shuffle_epi8(lut, hi);
    }
    _mm512_storeu_si512(reinterpret_cast<void*>(dst + 128 * c), lo);
    _mm512_storeu_si512(reinterpret_cast<void*>(dst + 128 * c + 64), hi);
  }
}

}  // namespace

// Both operands are unpacked to bytes once, outside the dot-product loop: the activations of an M tile once
// per call, the weights of an N block once per M tile (reused by every token block of the tile), so the
// inner loop is loads and vpdpbusd only, like an int8 GEMM.
FC_AVX512_TARGET void gemm_avx512vnni(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n,
                                      int64_t kb, int threads) {
  std::vector<int32_t> xsum(m, 0);  // sum of every activation code of the row
  for (int64_t i = 0; i < m; ++i) {
    int32_t s = 0;
    for (int64_t j = 0; j < kb; ++j) s += low_code(xq[i * kb + j]) + high_code(xq[i * kb + j]);
    xsum[i] = s;
  }
  const int64_t kpad = (kb + kChunk - 1) / kChunk * kChunk;
  const int64_t row_bytes = 2 * kpad;
  const int64_t chunks = kpad / kChunk;
  std::vector<uint8_t> xu(static_cast<size_t>(m * row_bytes));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) unpack_row(xq + i * kb, kb, xu.data() + i * row_bytes, false);
  const int64_t nblocks = (n + kNBlock - 1) / kNBlock;
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> wu(static_cast<size_t>(kNBlock * row_bytes));
    for (int64_t mt = 0; mt < m; mt += kMTile) {
      const int64_t mt_end = std::min(m, mt + kMTile);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t n0 = b * kNBlock;
        const int64_t nb = std::min(kNBlock, n - n0);
        for (int64_t j = 0; j < kNBlock; ++j)
          unpack_row(wq + (n0 + std::min(j, nb - 1)) * kb, kb, wu.data() + j * row_bytes, true);
        for (int64_t i0 = mt; i0 < mt_end; i0 += kMBlock) {
          const int64_t mb = std::min(kMBlock, mt_end - i0);
          const uint8_t* xr[kMBlock];
          for (int64_t r = 0; r < kMBlock; ++r) xr[r] = xu.data() + (i0 + std::min(r, mb - 1)) * row_bytes;
          __m512i a[kMBlock][kNBlock];
          for (int64_t r = 0; r < kMBlock; ++r)
            for (int64_t j = 0; j < kNBlock; ++j) a[r][j] = _mm512_setzero_si512();
          for (int64_t c = 0; c < chunks; ++c) {
            __m512i xlo[kMBlock], xhi[kMBlock];
            for (int64_t r = 0; r < kMBlock; ++r) {
              xlo[r] = _mm512_loadu_si512(reinterpret_cast<const void*>(xr[r] + 128 * c));
              xhi[r] = _mm512_loadu_si512(reinterpret_cast<const void*>(xr[r] + 128 * c + 64));
            }
            for (int64_t j = 0; j < kNBlock; ++j) {
              const uint8_t* w = wu.data() + j * row_bytes + 128 * c;
              const __m512i wlo = _mm512_loadu_si512(reinterpret_cast<const void*>(w));
              const __m512i whi = _mm512_loadu_si512(reinterpret_cast<const void*>(w + 64));
              for (int64_t r = 0; r < kMBlock; ++r) {
                a[r][j] = _mm512_dpbusd_epi32(a[r][j], wlo, xlo[r]);
                a[r][j] = _mm512_dpbusd_epi32(a[r][j], whi, xhi[r]);
              }
            }
          }
          for (int64_t r = 0; r < mb; ++r)
            for (int64_t j = 0; j < nb; ++j)
              acc[(i0 + r) * n + n0 + j] = _mm512_reduce_add_epi32(a[r][j]) - 8 * xsum[i0 + r];
        }
      }
    }
  }
}

}  // namespace fair_calib
