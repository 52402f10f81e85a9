// AVX-512 VNNI GEMM with int4 weights (vpdpbusd), on packed int4 activations (W4A4) or int8 activations (W4A8). Compiled with function-level target attributes only, so this
// translation unit builds with the default flags and the extension still loads on AVX2-only CPUs; it is
// called only after a runtime check (w4a4_cpu.cpp).
//
// Two kernels, chosen by the token count M:
// * M > kSmallM: output channels in the vector lanes. A vector holds 16 channels × 4 weight codes (one dword
//   per channel) and is multiplied by one token's 4 activation codes broadcast to every lane, so vpdpbusd
//   adds 4 products straight into the (channel, token) lane. Register tile: 64 channels (4 vectors) × up to
//   6 tokens = 24 int32 accumulators, kept in registers over the whole K, then the fp32 epilogue is applied
//   in registers and the tile stored: one pass, no int32 matrix in memory. The weights are regrouped per
//   call, per block of 64 channels (repack_block), which the many tokens amortize.
// * M <= kSmallM: dot products straight on the packed rows (dot_tile), no regrouping: 4 channels × up to 4
//   tokens, each accumulator reduced across its lanes once at the end of K.
// Code order (first kernel). Packed byte j of a row holds code 2j (low nibble) and 2j+1 (high nibble). A dword of 4
// packed bytes (codes 8g .. 8g+7) gives two quads: its low nibbles (codes 8g, 8g+2, 8g+4, 8g+6) and its
// high nibbles (codes 8g+1, +3, +5, +7). The weights are regrouped per call (repack_block: a 16 × 16 dword
// transpose, then nibble split) and the activations are unpacked to signed bytes in the same quad order
// (unpack_activations), so both operands pair up code for code.
//
// int8 activations (W4A8) take the same kernels: only the per-call activation buffers are filled differently
// (gather_activations_int8 / gather_activations_dot_int8 put the int8 codes in the order the unpacked int4 codes
// have), so the weight side, the register tiles, the prepared layout and the epilogue are shared.
//
// Exactness. vpdpbusd multiplies unsigned bytes by signed bytes and adds groups of four products straight
// into int32 lanes (no int16 stage, no saturation in the non-"s" form). Weights are the unsigned operand,
// offset by 8 (nibble ^ 0x8 = w + 8 in [0, 15]); activations are signed (int4 or int8 codes: a group of four
// products is at most 4 · 15 · 128 in magnitude, and a row sum stays far below 2^31 for any real K). The offset
// is removed exactly:
// sum (w + 8) a = sum w a + 8 sum a, with sum a over the whole row. The K tail is zero-padded to a whole
// dword of packed bytes: padding activation codes are 0, so their products are 0 whatever the weight. The
// fp32 epilogue is (float(acc) * sx[m]) * sw[n] (+ bias[n]) in that order, as the reference (setup.py builds
// with -ffp-contract=off, so no FMA contraction).
//
// Memory: the weights stay the packed 0.5 byte per weight (no second layout is stored); per call, about
// M × K bytes of unpacked activations, and per thread 64 × ceil(K/128) × 64 bytes of regrouped weights
// (one 64-channel block, L2), both kept between calls (thread_local, grown when a larger shape comes).
// gcc 12 flags _mm512_undefined_epi32() inside its own intrinsic headers (_mm512_reduce_add_epi32)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../w4a4_common.h"
#include "simd_common.h"
#include "w4a4_cpu_internal.h"

#define FC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace fair_calib {
namespace {

constexpr int kNv = 4;                  // channel vectors per register tile (16 channels each)
constexpr int64_t kNb = 16 * kNv;       // channels per block (64)
constexpr int kTm = 6;                  // tokens per register tile: 4 × 6 = 24 accumulators
constexpr int64_t kPrefetch = 512;
constexpr int64_t kSmallM = 12;       // token counts up to this take the dot-product kernel (no weight regrouping)

// Unpacks token rows [i0, i1) of xq (kb packed bytes each) into xs (row stride xstride = 8·ceil(kb/4)
// bytes): per dword g of packed bytes, 4 signed low-nibble codes then 4 signed high-nibble codes; padding
// 0. xsum[i] = the sum of the row's codes.
FC_AVX512_TARGET void unpack_activations(const uint8_t* xq, int64_t kb, int64_t i0, int64_t i1, int8_t* xs,
                                         int64_t xstride, int32_t* xsum) {
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
  const __m512i lo_mask = _mm512_set1_epi64(0x0F0F0F0FLL);
  const __m512i hi_mask = _mm512_set1_epi64(0x0F0F0F0F00000000LL);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = i0; i < i1; ++i) {
    const uint8_t* src = xq + i * kb;
    int8_t* dst = xs + i * xstride;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < kb; k += 32) {  // 32 packed bytes -> 64 code bytes
      const int64_t left = kb - k;
      const __mmask32 mask = left >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << left) - 1);
      const __m512i d = _mm512_cvtepu32_epi64(_mm256_maskz_loadu_epi8(mask, src + k));
      const __m512i nib = _mm512_or_si512(_mm512_and_si512(d, lo_mask),
                                          _mm512_and_si512(_mm512_slli_epi64(d, 28), hi_mask));
      const __m512i codes = _mm512_shuffle_epi8(lut, nib);  // padding nibbles are 0 -> code 0
      sum = _mm512_dpbusd_epi32(sum, ones, codes);
      const int64_t out_bytes = std::min<int64_t>(64, xstride - 2 * k);
      if (out_bytes == 64) {
        _mm512_storeu_si512(reinterpret_cast<void*>(dst + 2 * k), codes);
      } else {
        _mm512_mask_storeu_epi8(dst + 2 * k, (1ULL << out_bytes) - 1, codes);
      }
    }
    xsum[i] = _mm512_reduce_add_epi32(sum);
  }
}

// unpack_activations for int8 codes (W4A8): rows [i0, i1) of x (x.k codes each) into xs in the same order (per
// dword group g of packed weight bytes: codes 8g, 8g+2, 8g+4, 8g+6, then 8g+1, 8g+3, 8g+5, 8g+7), padding 0.
FC_AVX512_TARGET void gather_activations_int8(const ActRows& x, int64_t i0, int64_t i1, int8_t* xs, int64_t xstride,
                                              int32_t* xsum) {
  const __m512i order = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15));
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t k = x.k;
  for (int64_t i = i0; i < i1; ++i) {
    const int8_t* src = x.codes + i * k;
    int8_t* dst = xs + i * xstride;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t j = 0; j < xstride; j += 64) {
      const __mmask64 mask = simd::load_mask64(k - j);
      const __m512i codes = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(mask, src + j), order);
      sum = _mm512_dpbusd_epi32(sum, ones, codes);
      const int64_t out_bytes = std::min<int64_t>(64, xstride - j);
      if (out_bytes == 64) {
        _mm512_storeu_si512(reinterpret_cast<void*>(dst + j), codes);
      } else {
        _mm512_mask_storeu_epi8(dst + j, (1ULL << out_bytes) - 1, codes);
      }
    }
    xsum[i] = _mm512_reduce_add_epi32(sum);
  }
}

// 16 × 16 transpose of dwords: r[j] holds row j's 16 dwords on entry, r[q] holds dword q of every row on exit.
FC_AVX512_TARGET inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// Regroups the weight rows n0 .. n0+63 (rows past n repeat row n-1; their outputs are never stored) into
// wb: for dword group g (codes 8g .. 8g+7) and channel vector v, one vector of 16 channels × one dword of
// packed bytes, each nibble xor 8 (= w + 8, unsigned), at wb + (g·kNv + v)·64; the tile splits the nibbles.
// Groups past kb hold nibbles 8 (w = 0).
FC_AVX512_TARGET void repack_block(const uint8_t* wq, int64_t n, int64_t kb, int64_t n0, uint8_t* wb) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x88));
  for (int v = 0; v < kNv; ++v) {
    const uint8_t* rows[16];
    simd::tile_rows(rows, wq, n0 + 16 * v, n - 1, kb);
    for (int64_t k = 0; k < kb; k += 64) {  // 64 packed bytes = 16 dword groups per row
      const __mmask64 mask = simd::tail_mask64(kb - k);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(rows[j] + k + kPrefetch), _MM_HINT_T0);
        r[j] = _mm512_maskz_loadu_epi8(mask, rows[j] + k);
      }
      transpose16(r);
      const int64_t g0 = k / 4;
      for (int q = 0; q < 16; ++q)  // masked-off bytes: 0 ^ 0x88 -> nibbles 8 = w + 8 with w = 0
        _mm512_storeu_si512(reinterpret_cast<void*>(wb + ((g0 + q) * kNv + v) * 64), _mm512_xor_si512(r[q], flip));
    }
  }
}


// One register tile: TM tokens (rows i0 .. i0+TM-1 of xs) × 64 channels (n0 ..), over all groups.
template <int TM>
FC_AVX512_TARGET void tile(const int8_t* xs, int64_t xstride, const int32_t* xsum, int64_t i0, const uint8_t* wb,
                           int64_t groups, int64_t n, int64_t n0, const GemmOut& ep) {
  __m512i c[TM][kNv];
#pragma GCC unroll 6
  for (int t = 0; t < TM; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) c[t][v] = _mm512_setzero_si512();
  const int8_t* x0 = xs + i0 * xstride;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* w = wb + g * (kNv * 64);
    __m512i wp[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) wp[v] = _mm512_loadu_si512(reinterpret_cast<const void*>(w + v * 64));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m512i wv[kNv];
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v)
        wv[v] = h == 0 ? _mm512_and_si512(wp[v], low4) : _mm512_and_si512(_mm512_srli_epi16(wp[v], 4), low4);
#pragma GCC unroll 6
      for (int t = 0; t < TM; ++t) {
        int32_t x4;
        std::memcpy(&x4, x0 + t * xstride + 8 * g + 4 * h, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
#pragma GCC unroll 4
        for (int v = 0; v < kNv; ++v) c[t][v] = _mm512_dpbusd_epi32(c[t][v], wv[v], xb);
      }
    }
  }
  const int64_t nleft = n - n0;
#pragma GCC unroll 6
  for (int t = 0; t < TM; ++t) {
    const int64_t i = i0 + t;
    const __m512i corr = _mm512_set1_epi32(8 * xsum[i]);
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      const int64_t nv = nleft - 16 * v;
      if (nv <= 0) break;
      const __mmask16 mask = nv >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nv) - 1);
      const __m512i a = _mm512_sub_epi32(c[t][v], corr);
      const int64_t off = i * n + n0 + 16 * v;
      if (ep.sx == nullptr) {
        _mm512_mask_storeu_epi32(ep.acc + off, mask, a);
      } else {
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(ep.sx[i]));
        y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(mask, ep.sw + n0 + 16 * v));
        if (ep.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, ep.bias + n0 + 16 * v));
        _mm512_mask_storeu_ps(ep.y + off, mask, y);
      }
    }
  }
}

// Small-M kernel: dot products straight on the packed rows, no regrouping of the weights (whose cost the
// few tokens would not amortize). Per 64-byte chunk c of packed bytes (128 codes), a weight row gives two
// vectors of 64 unsigned codes + 8 (low nibbles: codes 128c + 2j; high nibbles: 128c + 2j + 1) and the
// activations are unpacked per call in the same order (xd: row stride 2·kpad bytes, low then high nibbles
// per chunk, padding 0); vpdpbusd adds 4 products per lane, and each of the kDn × kDt (channel, token)
// accumulators is reduced across its 16 lanes once, at the end of K.
constexpr int kDn = 4;  // channels per register tile
constexpr int kDt = 4;  // tokens per register tile (at most): 16 accumulators + 8 weight vectors

FC_AVX512_TARGET void unpack_activations_dot(const uint8_t* xq, int64_t kb, int64_t i0, int64_t i1, int8_t* xd,
                                             int64_t dstride, int32_t* xsum) {
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = i0; i < i1; ++i) {
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0, c = 0; k < kb; k += 64, ++c) {
      const __m512i b = _mm512_maskz_loadu_epi8(simd::tail_mask64(kb - k), xq + i * kb + k);
      const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(b, low4));  // padding: code 0
      const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(b, 4), low4));
      sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sum, ones, lo), ones, hi);
      _mm512_storeu_si512(reinterpret_cast<void*>(xd + i * dstride + 128 * c), lo);
      _mm512_storeu_si512(reinterpret_cast<void*>(xd + i * dstride + 128 * c + 64), hi);
    }
    xsum[i] = _mm512_reduce_add_epi32(sum);
  }
}

// unpack_activations_dot for int8 codes (W4A8): per 128 codes, the 64 even codes then the 64 odd ones (the
// order of the weight rows' low and high nibbles), padding 0.
FC_AVX512_TARGET void gather_activations_dot_int8(const ActRows& x, int64_t i0, int64_t i1, int8_t* xd,
                                                  int64_t dstride, int32_t* xsum) {
  // per 16-byte lane: the 8 even bytes, then the 8 odd ones; then the even / odd qwords of two vectors
  const __m512i split = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  const __m512i evens = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odds = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t k = x.k;
  for (int64_t i = i0; i < i1; ++i) {
    const int8_t* src = x.codes + i * k;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t j = 0; j < dstride; j += 128) {
      const __m512i a = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(simd::load_mask64(k - j), src + j), split);
      const __m512i b =
          _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(simd::load_mask64(k - j - 64), src + j + 64), split);
      sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sum, ones, a), ones, b);
      _mm512_storeu_si512(reinterpret_cast<void*>(xd + i * dstride + j), _mm512_permutex2var_epi64(a, evens, b));
      _mm512_storeu_si512(reinterpret_cast<void*>(xd + i * dstride + j + 64), _mm512_permutex2var_epi64(a, odds, b));
    }
    xsum[i] = _mm512_reduce_add_epi32(sum);
  }
}

template <int TT>
FC_AVX512_TARGET void dot_tile(const int8_t* xd, int64_t dstride, const int32_t* xsum, int64_t m, int64_t i0,
                               const uint8_t* wq, int64_t n, int64_t n0, int64_t kb, const GemmOut& ep) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x88));
  const uint8_t* wr[kDn];
  const int8_t* xr[TT];
  simd::tile_rows(wr, wq, n0, n - 1, kb);
  simd::tile_rows(xr, xd, i0, m - 1, dstride);
  __m512i c[TT][kDn];
  simd::zero_tile(c);
  for (int64_t k = 0, ch = 0; k < kb; k += 64, ++ch) {
    const __mmask64 mask = simd::tail_mask64(kb - k);
    __m512i wl[kDn], wh[kDn];
#pragma GCC unroll 4
    for (int j = 0; j < kDn; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(wr[j] + k + kPrefetch), _MM_HINT_T0);
      const __m512i b = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, wr[j] + k), flip);  // w + 8
      wl[j] = _mm512_and_si512(b, low4);
      wh[j] = _mm512_and_si512(_mm512_srli_epi16(b, 4), low4);
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      const __m512i xl = _mm512_loadu_si512(reinterpret_cast<const void*>(xr[t] + 128 * ch));
      const __m512i xh = _mm512_loadu_si512(reinterpret_cast<const void*>(xr[t] + 128 * ch + 64));
#pragma GCC unroll 4
      for (int j = 0; j < kDn; ++j) c[t][j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c[t][j], wl[j], xl), wh[j], xh);
    }
  }
  simd::store_tile(c, m, i0, n, n0, ep, [xsum](int64_t i, int32_t sum) { return sum - 8 * xsum[i]; });
}

// prepared: the weights already regrouped (vnni_prepack), or nullptr to regroup them per call from wq.
FC_AVX512_TARGET void gemm_vnni_impl(const ActRows& x, const uint8_t* wq, const uint8_t* prepared, int64_t m,
                                     int64_t n, int64_t kb, int threads, const GemmOut& ep) {
  if (m <= kSmallM && prepared == nullptr) {
    const int64_t dstride = 2 * ((kb + 63) / 64 * 64);
    static thread_local std::vector<int8_t> xd_buf;
    static thread_local std::vector<int32_t> xsum_small;
    int8_t* xd = grow_buffer(xd_buf, static_cast<size_t>(m * dstride));
    int32_t* xsum = grow_buffer(xsum_small, static_cast<size_t>(m));
    const int64_t strips = (n + kDn - 1) / kDn;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m; i += 4) {
        if (x.packed != nullptr) {
          unpack_activations_dot(x.packed, kb, i, std::min(m, i + 4), xd, dstride, xsum);
        } else {
          gather_activations_dot_int8(x, i, std::min(m, i + 4), xd, dstride, xsum);
        }
      }
#pragma omp for schedule(static)
      for (int64_t s = 0; s < strips; ++s)
        for (int64_t i0 = 0; i0 < m; i0 += kDt) {
          switch (std::min<int64_t>(kDt, m - i0)) {
            case 1: dot_tile<1>(xd, dstride, xsum, m, i0, wq, n, s * kDn, kb, ep); break;
            case 2: dot_tile<2>(xd, dstride, xsum, m, i0, wq, n, s * kDn, kb, ep); break;
            case 3: dot_tile<3>(xd, dstride, xsum, m, i0, wq, n, s * kDn, kb, ep); break;
            default: dot_tile<kDt>(xd, dstride, xsum, m, i0, wq, n, s * kDn, kb, ep);
          }
        }
    }
    return;
  }
  const int64_t groups = (kb + 3) / 4;      // dword groups of packed bytes (8 codes each)
  const int64_t xstride = 8 * groups;       // unpacked activation bytes per token
  const int64_t wgroups = (kb + 63) / 64 * 16;  // groups the repack writes (whole 64-byte chunks)
  static thread_local std::vector<int8_t> xs_buf;   // the calling thread's: shared by its workers
  static thread_local std::vector<int32_t> xsum_buf;
  int8_t* xs = grow_buffer(xs_buf, static_cast<size_t>(m * xstride));
  int32_t* xsum = grow_buffer(xsum_buf, static_cast<size_t>(m));
  const int64_t nblocks = (n + kNb - 1) / kNb;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; i += 16) {
      if (x.packed != nullptr) {
        unpack_activations(x.packed, kb, i, std::min(m, i + 16), xs, xstride, xsum);
      } else {
        gather_activations_int8(x, i, std::min(m, i + 16), xs, xstride, xsum);
      }
    }
    static thread_local std::vector<uint8_t> wb_buf;
    uint8_t* own = prepared == nullptr ? grow_buffer(wb_buf, static_cast<size_t>(wgroups * kNv * 64)) : nullptr;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * kNb;
      const uint8_t* wb = own;
      if (prepared != nullptr) {
        wb = prepared + b * wgroups * kNv * 64;
      } else {
        repack_block(wq, n, kb, n0, own);
      }
      int64_t i0 = 0;
      for (; i0 + kTm <= m; i0 += kTm) tile<kTm>(xs, xstride, xsum, i0, wb, groups, n, n0, ep);
      switch (m - i0) {
        case 5: tile<5>(xs, xstride, xsum, i0, wb, groups, n, n0, ep); break;
        case 4: tile<4>(xs, xstride, xsum, i0, wb, groups, n, n0, ep); break;
        case 3: tile<3>(xs, xstride, xsum, i0, wb, groups, n, n0, ep); break;
        case 2: tile<2>(xs, xstride, xsum, i0, wb, groups, n, n0, ep); break;
        case 1: tile<1>(xs, xstride, xsum, i0, wb, groups, n, n0, ep); break;
        default: break;
      }
    }
  }
}

}  // namespace

void gemm_avx512vnni(const ActRows& x, const uint8_t* wq, const uint8_t* prepared, int64_t m, int64_t n, int64_t kb,
                     int threads, const GemmOut& out) {
  if (m == 0 || n == 0) return;
  gemm_vnni_impl(x, wq, prepared, m, n, kb, threads, out);
}

int64_t vnni_prepared_bytes(int64_t n, int64_t kb) {
  return (n + kNb - 1) / kNb * ((kb + 63) / 64 * 16) * kNv * 64;
}

FC_AVX512_TARGET void vnni_prepack(const uint8_t* wq, int64_t n, int64_t kb, uint8_t* out, int threads) {
  const int64_t block_bytes = (kb + 63) / 64 * 16 * kNv * 64;
  const int64_t nblocks = (n + kNb - 1) / kNb;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) repack_block(wq, n, kb, b * kNb, out + b * block_bytes);
}

void vnni_unprepack(const uint8_t* prepared, int64_t n, int64_t kb, uint8_t* wq) {
  const int64_t wgroups = (kb + 63) / 64 * 16;
  for (int64_t c = 0; c < n; ++c) {
    const uint8_t* block = prepared + (c / kNb) * wgroups * kNv * 64 + ((c % kNb) / 16) * 64 + (c % 16) * 4;
    for (int64_t j = 0; j < kb; ++j) wq[c * kb + j] = block[(j / 4) * kNv * 64 + j % 4] ^ 0x88;
  }
}

}  // namespace fair_calib
