// Internal declarations shared by the CPU kernel translation units (not part of the public entry points).
#pragma once
#include <cstdint>
#include <vector>

namespace fair_calib {

// Where a GEMM kernel writes its [m, n] result: the exact int32 accumulators (sx == nullptr: into acc) or the
// fp32 epilogue y = (float(acc) * sx[i]) * sw[col] (+ bias[col]), in that order (the reference's).
struct GemmOut {
  const float* sx;    // [m] or nullptr
  const float* sw;    // [n]
  const float* bias;  // [n] or nullptr
  float* y;           // [m, n] (fp32 epilogue)
  int32_t* acc;       // [m, n] (int32 accumulators)

  // Writes output (i, col) of a row-major [m, n] result from its exact accumulator a.
  void store(int64_t i, int64_t col, int64_t n, int32_t a) const {
    if (sx == nullptr) {
      acc[i * n + col] = a;
      return;
    }
    float v = static_cast<float>(a) * sx[i];
    v = v * sw[col];
    if (bias != nullptr) v = v + bias[col];
    y[i * n + col] = v;
  }
};

// v.data() after growing v to at least `size` elements (never shrinks: per-thread buffers kept between calls).
template <typename T>
T* grow_buffer(std::vector<T>& v, size_t size) {
  if (v.size() < size) v.resize(size);
  return v.data();
}

// The activation operand of a GEMM with int4 weights: packed int4 codes (W4A4: `packed`, kb bytes per row, the
// weights' packed width) or int8 codes (W4A8: `codes`, k bytes per row, kb = ceil(k/2)); the other is null.
struct ActRows {
  const uint8_t* packed;
  const int8_t* codes;
  int64_t k;  // codes per row of `codes` (unused for packed rows)
};

// AVX-512 VNNI GEMM (w4a4_avx512.cpp), result through `out` (int32 accumulators or the fused fp32 epilogue), on
// the packed weights wq [n, kb] or, when `prepared` is not null, on the prepared layout (vnni_prepack). Call
// only when the CPU has AVX-512 VNNI.
void gemm_avx512vnni(const ActRows& x, const uint8_t* wq, const uint8_t* prepared, int64_t m, int64_t n, int64_t kb,
                     int threads, const GemmOut& out);

// AVX-512 VNNI W8A8 GEMM for few tokens (w8a8_avx512.cpp): int8 xq [m, k] × int8 wq [n, k], result through `out`.
// Call only when the CPU has AVX-512 VNNI.
void gemm_w8a8_avx512vnni(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, int threads,
                          const GemmOut& out);

// The weights regrouped once for the VNNI GEMM (the layout gemm_vnni_impl regroups per call): per block of 64
// output channels (the last block padded by repeating row n-1), per dword group g of packed bytes (codes
// 8g .. 8g+7, groups padded to whole 64-byte chunks with w = 0), per 16-channel vector v: 16 channels × one
// dword, each nibble xor 8 (= w + 8). vnni_prepared_bytes(n, kb) = ceil(n/64)·64 × ceil(kb/64)·64 bytes:
// 0.5 byte per weight plus the padding. vnni_prepack needs AVX-512 (call it only when the CPU has VNNI);
// vnni_unprepack (portable) restores the packed [n, kb] rows exactly.
int64_t vnni_prepared_bytes(int64_t n, int64_t kb);
void vnni_prepack(const uint8_t* wq, int64_t n, int64_t kb, uint8_t* out, int threads);
void vnni_unprepack(const uint8_t* prepared, int64_t n, int64_t kb, uint8_t* wq);

// The GEMM's instruction set now: 0 scalar, 1 AVX2, 2 AVX-512 VNNI (w4a4_cpu.cpp); the transform follows it.
int current_isa_level();

// The OpenMP default thread count (1 without OpenMP).
int default_cpu_threads();

// Symmetric int4 quantization and packing of one fp32 row of k values: packed[ceil(k/2)], *scale
// (w4a4_quantize.cpp; vectorized for the current instruction set, bit-identical to the scalar rule).
void quantize_pack_row(const float* row, int64_t k, float clip, uint8_t* packed, float* scale);

// Symmetric int8 quantization of one fp32 row of k values: codes[k], *scale (a8_quantize.cpp; vectorized for
// the current instruction set, bit-identical to the scalar rule).
void quantize_int8_row(const float* row, int64_t k, float clip, int8_t* codes, float* scale);

}  // namespace fair_calib
