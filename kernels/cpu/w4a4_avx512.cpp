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
#include <cstring>
#include <vector>

#include "../w4a4_common.h"
#include "w4a4_cpu_internal.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace fair_calib {
namespace {

constexpr int64_t kChunk = 64;   // bytes per zmm (128 codes)

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

// Register tile: kNr output channels × kTv·16 tokens, the tokens in the vector lanes. Per quad of K codes, a
// vector holds 16 tokens × 4 activation codes (signed) and each channel's 4 weight codes (unsigned, + 8) are
// broadcast, so vpdpbusd adds 4 products straight into the (token, channel) lane: no horizontal sums, and the
// weight side is one 4-byte broadcast per channel per quad.
constexpr int kNr = 8;     // output channels per register tile
constexpr int kTvMax = 3;  // token vectors (16 tokens each) per register tile: 8 × 3 = 24 accumulators

template <int TV>
FC_AVX512_TARGET inline void vnni_tile(const uint8_t* xpanel, int64_t group_stride, const uint8_t* wu,
                                       int64_t row_bytes, int64_t quads, __m512i (&a)[kNr][kTvMax]) {
  __m512i acc[kNr][TV];  // local, so the accumulators stay in registers (a is written once at the end)
  for (int r = 0; r < kNr; ++r)
    for (int v = 0; v < TV; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t q = 0; q < quads; ++q) {
    __m512i xv[TV];
    for (int v = 0; v < TV; ++v)
      xv[v] = _mm512_loadu_si512(reinterpret_cast<const void*>(xpanel + v * group_stride + 64 * q));
    for (int r = 0; r < kNr; ++r) {
      int32_t wq4;
      std::memcpy(&wq4, wu + r * row_bytes + 4 * q, 4);
      const __m512i wb = _mm512_set1_epi32(wq4);
      for (int v = 0; v < TV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], wb, xv[v]);
    }
  }
  for (int r = 0; r < kNr; ++r)
    for (int v = 0; v < TV; ++v) a[r][v] = acc[r][v];
}

}  // namespace

// Activations: unpacked to signed bytes (unpack_row's code order) and interleaved once per call into groups
// of 16 tokens: group g, quad q holds 64 bytes = 16 tokens × 4 codes. Weights: each thread unpacks kNr rows
// at a time to unsigned bytes (codes + 8) in a private buffer (reused by every token of the call), then runs
// the register tiles over all token groups. Memory stays the packed 0.5 byte per weight; the buffers are
// per call (M·K bytes for the activations, kNr·K bytes per thread).
FC_AVX512_TARGET void gemm_avx512vnni(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n,
                                      int64_t kb, int threads) {
  const int64_t kpad = (kb + kChunk - 1) / kChunk * kChunk;
  const int64_t row_bytes = 2 * kpad;  // unpacked codes per row (padding codes are 0)
  const int64_t quads = row_bytes / 4;
  const int64_t groups = (m + 15) / 16;
  const int64_t group_stride = 16 * row_bytes;
  std::vector<int32_t> xsum(m, 0);  // sum of every activation code of the row
  std::vector<uint8_t> xi(static_cast<size_t>(groups * group_stride), 0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> row(static_cast<size_t>(row_bytes));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      unpack_row(xq + i * kb, kb, row.data(), false);
      int32_t s = 0;
      for (int64_t j = 0; j < row_bytes; ++j) s += static_cast<int8_t>(row[j]);
      xsum[i] = s;
      uint8_t* dst = xi.data() + (i / 16) * group_stride + (i % 16) * 4;
      for (int64_t q = 0; q < quads; ++q) std::memcpy(dst + 64 * q, row.data() + 4 * q, 4);
    }
  }
  const int64_t nblocks = (n + kNr - 1) / kNr;
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> wu(static_cast<size_t>(kNr * row_bytes));
    alignas(64) int32_t lanes[16];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * kNr;
      const int64_t nb = std::min<int64_t>(kNr, n - n0);
      for (int64_t j = 0; j < kNr; ++j)
        unpack_row(wq + (n0 + std::min(j, nb - 1)) * kb, kb, wu.data() + j * row_bytes, true);
      for (int64_t g0 = 0; g0 < groups; g0 += kTvMax) {
        const int tv = static_cast<int>(std::min<int64_t>(kTvMax, groups - g0));
        __m512i a[kNr][kTvMax];
        const uint8_t* xpanel = xi.data() + g0 * group_stride;
        if (tv == 3) {
          vnni_tile<3>(xpanel, group_stride, wu.data(), row_bytes, quads, a);
        } else if (tv == 2) {
          vnni_tile<2>(xpanel, group_stride, wu.data(), row_bytes, quads, a);
        } else {
          vnni_tile<1>(xpanel, group_stride, wu.data(), row_bytes, quads, a);
        }
        for (int v = 0; v < tv; ++v) {
          const int64_t t0 = (g0 + v) * 16;
          const int64_t tn = std::min<int64_t>(16, m - t0);
          for (int64_t r = 0; r < nb; ++r) {
            _mm512_store_si512(reinterpret_cast<void*>(lanes), a[r][v]);
            for (int64_t t = 0; t < tn; ++t) acc[(t0 + t) * n + n0 + r] = lanes[t] - 8 * xsum[t0 + t];
          }
        }
      }
    }
  }
}

}  // namespace fair_calib
