// CPU GEMMs with int4 weights: W4A4 (packed int4 activations) and W4A8 (int8 activations) for AVX-512 VNNI
// (w4a4_avx512.cpp), AVX2 and scalar, chosen at run time (best the CPU supports, or the one forced with
// set_gemm_isa), and per-row int4 quantization.
//
// Exactness. vpmaddubsw multiplies an unsigned byte by a signed byte and adds adjacent pairs into int16
// (saturating). The weights are the unsigned operand, offset by 8 (nibble ^ 0x08 = w + 8 in [0, 15]); the
// activations are signed (a 16-entry shuffle maps each nibble to its value in [-8, 7]). Each product is at
// most 15 * 8 = 120 in magnitude, each pair 240, and a 32-byte chunk adds two pairs per lane (480), so 64
// chunks (4096 codes) fit an int16 lane (30720 < 32767) before widening to int32. The offset is removed
// exactly: sum (w + 8) a = sum w a + 8 sum a. Low and high nibbles of the two operands pair up directly
// because both use the same layout (code 2j low, 2j+1 high). int8 activations (W4A8) are split per 64 codes
// into their 32 even and 32 odd codes (the weights' low / high nibbles): products up to 15 * 128 = 1920, a chunk
// adds 4 of them per int16 lane (7680), so the accumulators widen every 4 chunks instead of 64.
#include "w4a4_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <atomic>
#include <cstring>

#include "../w4a4_common.h"
#include "w4a4_cpu_internal.h"

namespace fair_calib {
namespace {

constexpr int64_t kChunk = 32;            // bytes per AVX2 vector (64 codes)
constexpr int64_t kChunksPerWiden = 64;   // int16-safe chunks between widenings (see above)
constexpr int64_t kChunksPerWiden8 = 4;   // the same with int8 activations: 4 · 2 · 2 · 15 · 128 = 30720

int32_t dot_scalar(const uint8_t* x, const uint8_t* w, int64_t from, int64_t to) {
  int32_t s = 0;
  for (int64_t j = from; j < to; ++j) {
    s += low_code(x[j]) * low_code(w[j]) + high_code(x[j]) * high_code(w[j]);
  }
  return s;
}

int32_t dot_scalar_int8(const int8_t* x, const uint8_t* w, int64_t k) {
  int32_t s = 0;
  for (int64_t j = 0; j < k; ++j) s += x[j] * (j % 2 == 0 ? low_code(w[j / 2]) : high_code(w[j / 2]));
  return s;
}

void gemm_scalar(const ActRows& x, const uint8_t* wq, int64_t m, int64_t n, int64_t kb, int threads,
                 const GemmOut& out) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const int32_t a = x.packed != nullptr ? dot_scalar(x.packed + i * kb, wq + j * kb, 0, kb)
                                            : dot_scalar_int8(x.codes + i * x.k, wq + j * kb, x.k);
      out.store(i, j, n, a);
    }
  }
}

__attribute__((target("avx2"))) inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// AVX2 GEMM. Activations are unpacked once per call to signed bytes (per 32-byte chunk c of packed bytes:
// the 32 low-nibble codes, then the 32 high-nibble codes; padding 0), weights are split on the fly from the
// packed rows (xor 0x88, and, shift: two vectors of codes + 8). Register tile: kAvx2Tt tokens × kAvx2Cn
// channels of int16 accumulators (the activations are vpmaddubsw's memory operand), widened to int32 every
// kChunksPerWiden chunks, reduced across lanes at the end of K, then the epilogue. Tokens are taken in
// blocks of kAvx2Mb (their unpacked rows stay in L2 while every channel strip sweeps them).
constexpr int kAvx2Tt = 3;            // tokens per register tile (at most)
constexpr int kAvx2Cn = 2;            // channels per register tile: 6 int16 accumulators
constexpr int64_t kAvx2Mb = 64;       // tokens per cache block

__attribute__((target("avx2"))) void unpack_activations_avx2(const uint8_t* xq, int64_t kb, int64_t i,
                                                             int8_t* xd, int64_t dstride, int32_t* xsum) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1,
                                       0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i sum = _mm256_setzero_si256();
  alignas(32) uint8_t tail[kChunk];
  for (int64_t k = 0, c = 0; k < kb; k += kChunk, ++c) {
    const uint8_t* src = xq + i * kb + k;
    if (k + kChunk > kb) {  // zero-padded copy of the row's last bytes: padding codes are 0
      std::memset(tail, 0, sizeof(tail));
      std::memcpy(tail, src, static_cast<size_t>(kb - k));
      src = tail;
    }
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, low4));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), low4));
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, lo), _mm256_maddubs_epi16(ones8, hi));
    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, ones16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xd + i * dstride + 2 * kChunk * c), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xd + i * dstride + 2 * kChunk * c + kChunk), hi);
  }
  xsum[i] = hsum_epi32(sum);
}


// unpack_activations_avx2 for int8 codes (W4A8): per 64 codes, the 32 even codes then the 32 odd ones (the
// order of the weight rows' low and high nibbles), padding 0.
__attribute__((target("avx2"))) void gather_activations_int8_avx2(const ActRows& x, int64_t i, int8_t* xd,
                                                                  int64_t dstride, int32_t* xsum) {
  // per 16-byte lane: the 8 even bytes, then the 8 odd ones
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int64_t k = x.k;
  const int8_t* row = x.codes + i * k;
  __m256i sum = _mm256_setzero_si256();
  alignas(32) int8_t tail[2 * kChunk];
  for (int64_t j = 0; j < dstride; j += 2 * kChunk) {
    const int8_t* src = row + j;
    if (j + 2 * kChunk > k) {  // zero-padded copy of the row's last codes: padding codes are 0
      std::memset(tail, 0, sizeof(tail));
      if (k > j) std::memcpy(tail, src, static_cast<size_t>(k - j));
      src = tail;
    }
    // qwords (even 0-7 | odd 0-7 | even 8-15 | odd 8-15) of each 32 codes -> (evens | odds)
    const __m256i a = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), split), 0xD8);
    const __m256i b = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + kChunk)), split), 0xD8);
    const __m256i even = _mm256_permute2x128_si256(a, b, 0x20), odd = _mm256_permute2x128_si256(a, b, 0x31);
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, even), _mm256_maddubs_epi16(ones8, odd));
    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, ones16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xd + i * dstride + j), even);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xd + i * dstride + j + kChunk), odd);
  }
  xsum[i] = hsum_epi32(sum);
}

// WIDEN: chunks between widenings of the int16 accumulators (kChunksPerWiden for int4 activations,
// kChunksPerWiden8 for int8 ones).
template <int TT, int64_t WIDEN>
__attribute__((target("avx2"))) void avx2_tile(const int8_t* xd, int64_t dstride, const int32_t* xsum, int64_t m,
                                               int64_t i0, const uint8_t* wq, int64_t n, int64_t n0, int64_t kb,
                                               const GemmOut& out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x88));
  const __m256i ones16 = _mm256_set1_epi16(1);
  const uint8_t* wr[kAvx2Cn];
  const int8_t* xr[TT];
  for (int j = 0; j < kAvx2Cn; ++j) wr[j] = wq + std::min<int64_t>(n0 + j, n - 1) * kb;
  for (int t = 0; t < TT; ++t) xr[t] = xd + std::min<int64_t>(i0 + t, m - 1) * dstride;
  alignas(32) uint8_t tail[kAvx2Cn][kChunk];
  __m256i c32[TT][kAvx2Cn];
#pragma GCC unroll 4
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 2
    for (int j = 0; j < kAvx2Cn; ++j) c32[t][j] = _mm256_setzero_si256();
  const int64_t chunks = (kb + kChunk - 1) / kChunk;
  for (int64_t c0 = 0; c0 < chunks; c0 += WIDEN) {
    const int64_t c1 = std::min(chunks, c0 + WIDEN);
    __m256i c16[TT][kAvx2Cn];
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 2
      for (int j = 0; j < kAvx2Cn; ++j) c16[t][j] = _mm256_setzero_si256();
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t k = c * kChunk;
      const bool last = k + kChunk > kb;
      __m256i wl[kAvx2Cn], wh[kAvx2Cn];
#pragma GCC unroll 2
      for (int j = 0; j < kAvx2Cn; ++j) {
        const uint8_t* src = wr[j] + k;
        if (last) {  // never read past the row; the activations' padding makes these products 0
          std::memset(tail[j], 0, kChunk);
          std::memcpy(tail[j], src, static_cast<size_t>(kb - k));
          src = tail[j];
        }
        const __m256i b = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), flip);
        wl[j] = _mm256_and_si256(b, low4);                         // codes + 8, unsigned
        wh[j] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
      }
      // tokens outer, channels inner: 2 activation vectors live at a time (16 ymm registers in all)
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) {
        const int8_t* x = xr[t] + 2 * k;
        const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
        const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + kChunk));
#pragma GCC unroll 2
        for (int j = 0; j < kAvx2Cn; ++j)
          c16[t][j] = _mm256_add_epi16(_mm256_add_epi16(c16[t][j], _mm256_maddubs_epi16(wl[j], xl)),
                                       _mm256_maddubs_epi16(wh[j], xh));
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 2
      for (int j = 0; j < kAvx2Cn; ++j) c32[t][j] = _mm256_add_epi32(c32[t][j], _mm256_madd_epi16(c16[t][j], ones16));
  }
  const int64_t tn = std::min<int64_t>(TT, m - i0), jn = std::min<int64_t>(kAvx2Cn, n - n0);
  for (int t = 0; t < tn; ++t) {
    for (int j = 0; j < jn; ++j) {
      const int64_t i = i0 + t, col = n0 + j;
      out.store(i, col, n, hsum_epi32(c32[t][j]) - 8 * xsum[i]);
    }
  }
}

template <int64_t WIDEN>
__attribute__((target("avx2"))) void avx2_tiles(const int8_t* xd, int64_t dstride, const int32_t* xsum, int64_t m,
                                                const uint8_t* wq, int64_t n, int64_t kb, int64_t tb, int64_t s,
                                                const GemmOut& out) {
  const int64_t t_end = std::min(m, (tb + 1) * kAvx2Mb);
  for (int64_t i0 = tb * kAvx2Mb; i0 < t_end; i0 += kAvx2Tt) {
    switch (std::min<int64_t>(kAvx2Tt, t_end - i0)) {
      case 1: avx2_tile<1, WIDEN>(xd, dstride, xsum, t_end, i0, wq, n, s * kAvx2Cn, kb, out); break;
      case 2: avx2_tile<2, WIDEN>(xd, dstride, xsum, t_end, i0, wq, n, s * kAvx2Cn, kb, out); break;
      default: avx2_tile<kAvx2Tt, WIDEN>(xd, dstride, xsum, t_end, i0, wq, n, s * kAvx2Cn, kb, out);
    }
  }
}

__attribute__((target("avx2"))) void gemm_avx2(const ActRows& x, const uint8_t* wq, int64_t m, int64_t n,
                                               int64_t kb, int threads, const GemmOut& out) {
  if (m == 0 || n == 0) return;
  const int64_t dstride = 2 * ((kb + kChunk - 1) / kChunk * kChunk);
  static thread_local std::vector<int8_t> xd_buf;  // the calling thread's, shared by its workers
  static thread_local std::vector<int32_t> xsum_buf;
  int8_t* xd = grow_buffer(xd_buf, static_cast<size_t>(m * dstride));
  int32_t* xsum = grow_buffer(xsum_buf, static_cast<size_t>(m));
  const int64_t tblocks = (m + kAvx2Mb - 1) / kAvx2Mb, strips = (n + kAvx2Cn - 1) / kAvx2Cn;
  const bool int8 = x.packed == nullptr;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      if (int8) {
        gather_activations_int8_avx2(x, i, xd, dstride, xsum);
      } else {
        unpack_activations_avx2(x.packed, kb, i, xd, dstride, xsum);
      }
    }
#pragma omp for collapse(2) schedule(static)
    for (int64_t tb = 0; tb < tblocks; ++tb) {
      for (int64_t s = 0; s < strips; ++s) {
        if (int8) {
          avx2_tiles<kChunksPerWiden8>(xd, dstride, xsum, m, wq, n, kb, tb, s, out);
        } else {
          avx2_tiles<kChunksPerWiden>(xd, dstride, xsum, m, wq, n, kb, tb, s, out);
        }
      }
    }
  }
}

bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

bool has_avx512vnni() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vnni");
  return ok;
}

enum Isa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };
const char* const kIsaNames[] = {"scalar", "avx2", "avx512vnni"};

bool isa_supported(int isa) {
  return isa == kScalar || (isa == kAvx2 && has_avx2()) || (isa == kAvx512Vnni && has_avx512vnni());
}

int best_isa() { return has_avx512vnni() ? kAvx512Vnni : (has_avx2() ? kAvx2 : kScalar); }

std::atomic<int> g_isa{-1};  // -1: not chosen yet (the best supported)

int current_isa() {
  const int isa = g_isa.load(std::memory_order_relaxed);
  return isa < 0 ? best_isa() : isa;
}

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

const char* gemm_isa() { return kIsaNames[current_isa()]; }

int supported_gemm_isas(const char** names, int capacity) {
  int count = 0;
  for (int isa = kScalar; isa <= kAvx512Vnni; ++isa) {
    if (isa_supported(isa)) {
      if (count < capacity) names[count] = kIsaNames[isa];
      ++count;
    }
  }
  return count;
}

int set_gemm_isa(const char* name) {
  if (name == nullptr || name[0] == '\0' || std::strcmp(name, "auto") == 0) {
    g_isa.store(-1);
    return 0;
  }
  for (int isa = kScalar; isa <= kAvx512Vnni; ++isa) {
    if (std::strcmp(name, kIsaNames[isa]) == 0) {
      if (!isa_supported(isa)) return -2;
      g_isa.store(isa);
      return 0;
    }
  }
  return -1;
}

namespace {

// The GEMM on the current instruction set, with the weights packed (prepared == nullptr) or prepared (VNNI reads
// them directly; the others unprepare a temporary copy).
void gemm_dispatch(const ActRows& x, const uint8_t* wq, const uint8_t* prepared, int64_t m, int64_t n, int64_t kb,
                   int threads, const GemmOut& out) {
  if (threads <= 0) threads = default_threads();
  const int isa = current_isa();
  if (isa == kAvx512Vnni) {
    gemm_avx512vnni(x, wq, prepared, m, n, kb, threads, out);
    return;
  }
  std::vector<uint8_t> copy;
  if (prepared != nullptr) {
    copy.resize(static_cast<size_t>(n * kb));
    vnni_unprepack(prepared, n, kb, copy.data());
    wq = copy.data();
  }
  if (isa == kAvx2) {
    gemm_avx2(x, wq, m, n, kb, threads, out);
  } else {
    gemm_scalar(x, wq, m, n, kb, threads, out);
  }
}

ActRows packed_rows(const uint8_t* xq) { return ActRows{xq, nullptr, 0}; }
ActRows int8_rows(const int8_t* xq, int64_t k) { return ActRows{nullptr, xq, k}; }
GemmOut to_acc(int32_t* acc) { return GemmOut{nullptr, nullptr, nullptr, nullptr, acc}; }

}  // namespace

void int4_gemm_acc(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t kb,
                   int threads) {
  gemm_dispatch(packed_rows(xq), wq, nullptr, m, n, kb, threads, to_acc(acc));
}

void w4a4_gemm_f32(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                   float* y, int64_t m, int64_t n, int64_t kb, int threads) {
  gemm_dispatch(packed_rows(xq), wq, nullptr, m, n, kb, threads, GemmOut{sx, sw, bias, y, nullptr});
}

int64_t prepared_weight_bytes(int64_t n, int64_t kb) { return vnni_prepared_bytes(n, kb); }

int prepare_weight(const uint8_t* wq, int64_t n, int64_t kb, uint8_t* prepared, int threads) {
  if (!has_avx512vnni()) return -2;
  if (threads <= 0) threads = default_threads();
  vnni_prepack(wq, n, kb, prepared, threads);
  return 0;
}

void unprepare_weight(const uint8_t* prepared, int64_t n, int64_t kb, uint8_t* wq) {
  vnni_unprepack(prepared, n, kb, wq);
}

void int4_gemm_acc_prepared(const uint8_t* xq, const uint8_t* prepared, int32_t* acc, int64_t m, int64_t n,
                            int64_t kb, int threads) {
  gemm_dispatch(packed_rows(xq), nullptr, prepared, m, n, kb, threads, to_acc(acc));
}

void w4a4_gemm_prepared_f32(const uint8_t* xq, const float* sx, const uint8_t* prepared, const float* sw,
                            const float* bias, float* y, int64_t m, int64_t n, int64_t kb, int threads) {
  gemm_dispatch(packed_rows(xq), nullptr, prepared, m, n, kb, threads, GemmOut{sx, sw, bias, y, nullptr});
}

void int8x4_gemm_acc(const int8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t k,
                     int threads) {
  gemm_dispatch(int8_rows(xq, k), wq, nullptr, m, n, (k + 1) / 2, threads, to_acc(acc));
}

void w4a8_gemm_f32(const int8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                   float* y, int64_t m, int64_t n, int64_t k, int threads) {
  gemm_dispatch(int8_rows(xq, k), wq, nullptr, m, n, (k + 1) / 2, threads, GemmOut{sx, sw, bias, y, nullptr});
}

void int8x4_gemm_acc_prepared(const int8_t* xq, const uint8_t* prepared, int32_t* acc, int64_t m, int64_t n,
                              int64_t k, int threads) {
  gemm_dispatch(int8_rows(xq, k), nullptr, prepared, m, n, (k + 1) / 2, threads, to_acc(acc));
}

void w4a8_gemm_prepared_f32(const int8_t* xq, const float* sx, const uint8_t* prepared, const float* sw,
                            const float* bias, float* y, int64_t m, int64_t n, int64_t k, int threads) {
  gemm_dispatch(int8_rows(xq, k), nullptr, prepared, m, n, (k + 1) / 2, threads, GemmOut{sx, sw, bias, y, nullptr});
}

int w8a8_gemm_acc(const int8_t* xq, const int8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t k, int threads) {
  if (current_isa() != kAvx512Vnni) return -2;
  gemm_w8a8_avx512vnni(xq, wq, m, n, k, threads <= 0 ? default_threads() : threads, to_acc(acc));
  return 0;
}

int w8a8_gemm_f32(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, const float* bias, float* y,
                  int64_t m, int64_t n, int64_t k, int threads) {
  if (current_isa() != kAvx512Vnni) return -2;
  gemm_w8a8_avx512vnni(xq, wq, m, n, k, threads <= 0 ? default_threads() : threads, GemmOut{sx, sw, bias, y, nullptr});
  return 0;
}

void int32_epilogue_f32(const int32_t* acc, const float* sx, const float* sw, const float* bias, float* y, int64_t m,
                        int64_t n, int threads) {
  if (threads <= 0) threads = default_threads();
  const GemmOut out{sx, sw, bias, y, nullptr};
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) out.store(i, j, n, acc[i * n + j]);  // reads each entry before writing it
  }
}

int current_isa_level() { return current_isa(); }

int default_cpu_threads() { return default_threads(); }

void quantize_pack_rows(const float* x, float clip, uint8_t* packed, float* scale, int64_t m, int64_t k,
                        int threads) {
  if (threads <= 0) threads = default_threads();
  const int64_t kb = (k + 1) / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) quantize_pack_row(x + i * k, k, clip, packed + i * kb, scale + i);
}

}  // namespace fair_calib
