// CPU W4A4 kernels: int4 GEMMs for AVX-512 VNNI (w4a4_avx512.cpp), AVX2 and scalar, chosen at run time
// (best the CPU supports, or the one forced with set_gemm_isa), and per-row quantization.
//
// Exactness. vpmaddubsw multiplies an unsigned byte by a signed byte and adds adjacent pairs into int16
// (saturating). The weights are the unsigned operand, offset by 8 (nibble ^ 0x08 = w + 8 in [0, 15]); the
// activations are signed (a 16-entry shuffle maps each nibble to its value in [-8, 7]). Each product is at
// most 15 * 8 = 120 in magnitude, each pair 240, and a 32-byte chunk adds two pairs per lane (480), so 64
// chunks (4096 codes) fit an int16 lane (30720 < 32767) before widening to int32. The offset is removed
// exactly: sum (w + 8) a = sum w a + 8 sum a. Low and high nibbles of the two operands pair up directly
// because both use the same layout (code 2j low, 2j+1 high).
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
constexpr int64_t kNBlock = 4;            // output channels per register block
constexpr int64_t kMBlock = 2;            // tokens per register block
constexpr int64_t kMTile = 32;            // tokens per cache tile

int32_t dot_scalar(const uint8_t* x, const uint8_t* w, int64_t from, int64_t to) {
  int32_t s = 0;
  for (int64_t j = from; j < to; ++j) {
    s += low_code(x[j]) * low_code(w[j]) + high_code(x[j]) * high_code(w[j]);
  }
  return s;
}

void gemm_scalar(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t kb,
                 int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) acc[i * n + j] = dot_scalar(xq + i * kb, wq + j * kb, 0, kb);
  }
}

__attribute__((target("avx2"))) inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2"))) void gemm_avx2(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m,
                                               int64_t n, int64_t kb, int threads) {
  const int64_t kv = kb / kChunk * kChunk;
  std::vector<int32_t> xsum(m, 0);  // sum of the activation codes over the vectorized bytes
  for (int64_t i = 0; i < m; ++i) {
    int32_t s = 0;
    for (int64_t j = 0; j < kv; ++j) s += low_code(xq[i * kb + j]) + high_code(xq[i * kb + j]);
    xsum[i] = s;
  }
  const int64_t nblocks = (n + kNBlock - 1) / kNBlock;
  // Cache blocking: a tile of kMTile tokens stays in L2 while every output block sweeps it.
  for (int64_t mt = 0; mt < m; mt += kMTile) {
  const int64_t mt_end = std::min(m, mt + kMTile);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1,
                                         0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i offset = _mm256_set1_epi8(0x08);
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t n0 = b * kNBlock;
    const int64_t nb = std::min(kNBlock, n - n0);
    const uint8_t* wrow[kNBlock];
    for (int64_t j = 0; j < kNBlock; ++j) wrow[j] = wq + (n0 + std::min(j, nb - 1)) * kb;
    for (int64_t i0 = mt; i0 < mt_end; i0 += kMBlock) {
      const int64_t mb = std::min(kMBlock, mt_end - i0);
      const uint8_t* xr[kMBlock];
      for (int64_t r = 0; r < kMBlock; ++r) xr[r] = xq + (i0 + std::min(r, mb - 1)) * kb;
      __m256i acc32[kMBlock][kNBlock];
      for (int64_t r = 0; r < kMBlock; ++r)
        for (int64_t j = 0; j < kNBlock; ++j) acc32[r][j] = _mm256_setzero_si256();
      for (int64_t k0 = 0; k0 < kv; k0 += kChunk * kChunksPerWiden) {
        const int64_t kend = std::min(kv, k0 + kChunk * kChunksPerWiden);
        __m256i acc16[kMBlock][kNBlock];
        for (int64_t r = 0; r < kMBlock; ++r)
          for (int64_t j = 0; j < kNBlock; ++j) acc16[r][j] = _mm256_setzero_si256();
        for (int64_t k = k0; k < kend; k += kChunk) {
          __m256i xlo[kMBlock], xhi[kMBlock];
          for (int64_t r = 0; r < kMBlock; ++r) {
            const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + k));
            xlo[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(xb, low4));
            xhi[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(xb, 4), low4));
          }
          for (int64_t j = 0; j < kNBlock; ++j) {
            const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[j] + k));
            const __m256i wlo = _mm256_xor_si256(_mm256_and_si256(wb, low4), offset);
            const __m256i whi = _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(wb, 4), low4), offset);
            for (int64_t r = 0; r < kMBlock; ++r) {
              acc16[r][j] = _mm256_add_epi16(acc16[r][j], _mm256_maddubs_epi16(wlo, xlo[r]));
              acc16[r][j] = _mm256_add_epi16(acc16[r][j], _mm256_maddubs_epi16(whi, xhi[r]));
            }
          }
        }
        for (int64_t r = 0; r < kMBlock; ++r)
          for (int64_t j = 0; j < kNBlock; ++j)
            acc32[r][j] = _mm256_add_epi32(acc32[r][j], _mm256_madd_epi16(acc16[r][j], ones));
      }
      for (int64_t r = 0; r < mb; ++r) {
        for (int64_t j = 0; j < nb; ++j) {
          acc[(i0 + r) * n + n0 + j] =
              hsum_epi32(acc32[r][j]) - 8 * xsum[i0 + r] + dot_scalar(xr[r], wrow[j], kv, kb);
        }
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

void int4_gemm_acc(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t kb,
                   int threads) {
  if (threads <= 0) threads = default_threads();
  switch (current_isa()) {
    case kAvx512Vnni:
      gemm_avx512vnni(xq, wq, acc, m, n, kb, threads);
      break;
    case kAvx2:
      gemm_avx2(xq, wq, acc, m, n, kb, threads);
      break;
    default:
      gemm_scalar(xq, wq, acc, m, n, kb, threads);
  }
}

void w4a4_gemm_f32(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                   float* y, int64_t m, int64_t n, int64_t kb, int threads) {
  if (threads <= 0) threads = default_threads();
  if (current_isa() == kAvx512Vnni) {  // epilogue fused into the GEMM's register tiles
    gemm_avx512vnni_f32(xq, sx, wq, sw, bias, y, m, n, kb, threads);
    return;
  }
  std::unique_ptr<int32_t[]> acc(new int32_t[static_cast<size_t>(m * n)]);  // every entry is written
  int4_gemm_acc(xq, wq, acc.get(), m, n, kb, threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float v = static_cast<float>(acc[i * n + j]) * sx[i];
      v = v * sw[j];
      if (bias != nullptr) v = v + bias[j];
      y[i * n + j] = v;
    }
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
