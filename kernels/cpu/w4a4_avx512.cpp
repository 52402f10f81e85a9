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

// Register tile: kNr output channels × TV·16 tokens, the tokens in the vector lanes. Per quad of K codes, a
// vector holds 16 tokens × 4 activation codes (signed) and each channel's 4 weight codes (unsigned, + 8) are
// broadcast, so vpdpbusd adds 4 products straight into the (token, channel) lane: no horizontal sums, and the
// weight side is one 4-byte broadcast per channel per quad.
constexpr int kNr = 8;              // output channels per register tile
constexpr int kTvMax = 3;           // token vectors (16 tokens each) per register tile: 8 × 3 = 24 accumulators
constexpr int64_t kKChunks = 16;    // packed 64-byte chunks per K block: 2048 codes, 8 rows = 16 KB unpacked

// Adds the tile's products over `quads` quads to the partial sums part[v][r][16] (int32, kept between K blocks).
// The 24 accumulators are named variables (macros): with an array of vectors gcc 12 kept copying them to the
// stack inside the loop.
#define FC_PART(v, r) (part + ((v) * kNr + (r)) * 16)
#define FC_LOAD_ROW(r)                                                                        \
  __m512i a##r##0 = _mm512_loadu_si512(FC_PART(0, r));                                       \
  __m512i a##r##1 = TV > 1 ? _mm512_loadu_si512(FC_PART(1, r)) : _mm512_setzero_si512();     \
  __m512i a##r##2 = TV > 2 ? _mm512_loadu_si512(FC_PART(2, r)) : _mm512_setzero_si512();
#define FC_STEP_ROW(r)                                                                        \
  {                                                                                           \
    int32_t wq4;                                                                              \
    std::memcpy(&wq4, wu + (r) * wu_stride + 4 * q, 4);                                       \
    const __m512i wb = _mm512_set1_epi32(wq4);                                                \
    a##r##0 = _mm512_dpbusd_epi32(a##r##0, wb, x0);                                           \
    if (TV > 1) a##r##1 = _mm512_dpbusd_epi32(a##r##1, wb, x1);                               \
    if (TV > 2) a##r##2 = _mm512_dpbusd_epi32(a##r##2, wb, x2);                               \
  }
#define FC_STORE_ROW(r)                                \
  _mm512_storeu_si512(FC_PART(0, r), a##r##0);         \
  if (TV > 1) _mm512_storeu_si512(FC_PART(1, r), a##r##1); \
  if (TV > 2) _mm512_storeu_si512(FC_PART(2, r), a##r##2);

template <int TV>
FC_AVX512_TARGET inline void vnni_tile(const uint8_t* xpanel, int64_t group_stride, const uint8_t* wu,
                                       int64_t wu_stride, int64_t quads, int32_t* part) {
  static_assert(kNr == 8 && TV >= 1 && TV <= kTvMax, "the macros below spell out 8 rows and 3 vectors");
  FC_LOAD_ROW(0) FC_LOAD_ROW(1) FC_LOAD_ROW(2) FC_LOAD_ROW(3)
  FC_LOAD_ROW(4) FC_LOAD_ROW(5) FC_LOAD_ROW(6) FC_LOAD_ROW(7)
  for (int64_t q = 0; q < quads; ++q) {
    const __m512i x0 = _mm512_loadu_si512(reinterpret_cast<const void*>(xpanel + 64 * q));
    const __m512i x1 = TV > 1 ? _mm512_loadu_si512(reinterpret_cast<const void*>(xpanel + group_stride + 64 * q))
                              : _mm512_setzero_si512();
    const __m512i x2 = TV > 2
                           ? _mm512_loadu_si512(reinterpret_cast<const void*>(xpanel + 2 * group_stride + 64 * q))
                           : _mm512_setzero_si512();
    FC_STEP_ROW(0) FC_STEP_ROW(1) FC_STEP_ROW(2) FC_STEP_ROW(3)
    FC_STEP_ROW(4) FC_STEP_ROW(5) FC_STEP_ROW(6) FC_STEP_ROW(7)
  }
  FC_STORE_ROW(0) FC_STORE_ROW(1) FC_STORE_ROW(2) FC_STORE_ROW(3)
  FC_STORE_ROW(4) FC_STORE_ROW(5) FC_STORE_ROW(6) FC_STORE_ROW(7)
}
#undef FC_PART
#undef FC_LOAD_ROW
#undef FC_STEP_ROW
#undef FC_STORE_ROW

}  // namespace

// Activations: unpacked to signed bytes (unpack_row's code order) and interleaved once per call into groups
// of 16 tokens: group g, quad q holds 64 bytes = 16 tokens × 4 codes. Weights: each thread takes kNr rows at a
// time and, per K block of 2048 codes, unpacks them to unsigned bytes (codes + 8) in a private 16 KB buffer
// (stays in L1) used by every token group; the int32 partial sums of the kNr channels × all tokens live in a
// per-thread buffer between K blocks. Memory stays the packed 0.5 byte per weight (the buffers are per call).
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
  const int64_t block_bytes = kKChunks * kChunk;  // packed bytes per K block
  const int64_t wu_stride = 2 * block_bytes;      // unpacked bytes per row per K block
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> wu(static_cast<size_t>(kNr * wu_stride));
    std::vector<int32_t> part(static_cast<size_t>(groups * kNr * 16));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * kNr;
      const int64_t nb = std::min<int64_t>(kNr, n - n0);
      std::fill(part.begin(), part.end(), 0);
      for (int64_t k0 = 0; k0 < kb; k0 += block_bytes) {
        const int64_t kbytes = std::min(block_bytes, kb - k0);
        const int64_t kquads = (kbytes + kChunk - 1) / kChunk * kChunk * 2 / 4;
        for (int64_t j = 0; j < kNr; ++j)
          unpack_row(wq + (n0 + std::min(j, nb - 1)) * kb + k0, kbytes, wu.data() + j * wu_stride, true);
        const uint8_t* xblock = xi.data() + 2 * k0 * 16;  // quad index 2 * k0 / 4, 64 bytes per quad
        for (int64_t g0 = 0; g0 < groups; g0 += kTvMax) {
          const int tv = static_cast<int>(std::min<int64_t>(kTvMax, groups - g0));
          const uint8_t* xpanel = xblock + g0 * group_stride;
          int32_t* p = part.data() + g0 * kNr * 16;
          if (tv == 3) {
            vnni_tile<3>(xpanel, group_stride, wu.data(), wu_stride, kquads, p);
          } else if (tv == 2) {
            vnni_tile<2>(xpanel, group_stride, wu.data(), wu_stride, kquads, p);
          } else {
            vnni_tile<1>(xpanel, group_stride, wu.data(), wu_stride, kquads, p);
          }
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t tn = std::min<int64_t>(16, m - 16 * g);
        for (int64_t r = 0; r < nb; ++r)
          for (int64_t t = 0; t < tn; ++t)
            acc[(16 * g + t) * n + n0 + r] = part[(g * kNr + r) * 16 + t] - 8 * xsum[16 * g + t];
      }
    }
  }
}

}  // namespace fair_calib
