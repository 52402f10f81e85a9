// CPU kernels with int4 weights (W4A4, W4A8) and the int8 activation quantizer (W4A8, W8A8): plain C++ entry
// points on raw pointers (row-major, contiguous). `threads` <= 0 means the OpenMP default.
#pragma once
#include <cstdint>

namespace fair_calib {

// acc[m, n] = sum_k qx[m, k] * qw[n, k] over the packed int4 codes (kb bytes per row), exact int32.
void int4_gemm_acc(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t kb,
                   int threads);

// y[m, n] = (float(acc) * sx[m]) * sw[n] (+ bias[n]), fp32, evaluated in that order.
void w4a4_gemm_f32(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                   float* y, int64_t m, int64_t n, int64_t kb, int threads);

// Per-row symmetric int4 quantization and packing of x [m, k] (fp32): packed [m, ceil(k/2)], scale [m].
void quantize_pack_rows(const float* x, float clip, uint8_t* packed, float* scale, int64_t m, int64_t k,
                        int threads);

// Fused online transform + quantization (w4a4_quantize.cpp): for each row of x [m, a*b] (fp32), X = the
// row reshaped row-major to [a, b] (times diag [a*b] elementwise, if not null), Z = leftᵀ · X · right (left
// [a, a], right [b, b], row-major), then vec(Z) quantized and packed as quantize_pack_rows does. Uses the
// instruction set the GEMM uses (AVX-512, AVX2+FMA or scalar).
void transform_quantize_rows(const float* x, int64_t m, int64_t a, int64_t b, const float* left,
                             const float* right, const float* diag, float clip, uint8_t* packed, float* scale,
                             int threads);

// Weights prepared once (at load time) for the VNNI GEMM: a byte permutation of the packed [n, kb] codes,
// prepared_weight_bytes(n, kb) = ceil(n/64)·64 × ceil(kb/64)·64 bytes (0.5 byte per weight plus padding).
// prepare_weight returns -2 (and writes nothing) on a CPU without AVX-512 VNNI; unprepare_weight restores the
// packed codes exactly on any CPU. The prepared GEMMs compute exactly what int4_gemm_acc / w4a4_gemm_f32
// compute on the packed codes; under another instruction set than VNNI they unprepare into a temporary copy.
int64_t prepared_weight_bytes(int64_t n, int64_t kb);
int prepare_weight(const uint8_t* wq, int64_t n, int64_t kb, uint8_t* prepared, int threads);
void unprepare_weight(const uint8_t* prepared, int64_t n, int64_t kb, uint8_t* wq);
void int4_gemm_acc_prepared(const uint8_t* xq, const uint8_t* prepared, int32_t* acc, int64_t m, int64_t n,
                            int64_t kb, int threads);
void w4a4_gemm_prepared_f32(const uint8_t* xq, const float* sx, const uint8_t* prepared, const float* sw,
                            const float* bias, float* y, int64_t m, int64_t n, int64_t kb, int threads);

// W4A8: int8 activation codes xq [m, k] (one signed byte each) × packed int4 weights wq [n, ceil(k/2)]; the
// same kernels, accumulators and epilogue as the W4A4 GEMM (exact int32, then (acc * sx[m]) * sw[n] (+ bias)).
void int8x4_gemm_acc(const int8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t k,
                     int threads);
void w4a8_gemm_f32(const int8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                   float* y, int64_t m, int64_t n, int64_t k, int threads);
// The same on weights in the prepared layout (prepare_weight of the packed [n, ceil(k/2)] codes).
void int8x4_gemm_acc_prepared(const int8_t* xq, const uint8_t* prepared, int32_t* acc, int64_t m, int64_t n,
                              int64_t k, int threads);
void w4a8_gemm_prepared_f32(const int8_t* xq, const float* sx, const uint8_t* prepared, const float* sw,
                            const float* bias, float* y, int64_t m, int64_t n, int64_t k, int threads);

// The fp32 epilogue alone on exact int32 accumulators acc [m, n] (e.g. from torch._int_mm, W8A8): y[m, n] =
// (float(acc) * sx[m]) * sw[n] (+ bias[n]), in that order. y may be acc itself (in place: each entry is read
// before it is written).
void int32_epilogue_f32(const int32_t* acc, const float* sx, const float* sw, const float* bias, float* y, int64_t m,
                        int64_t n, int threads);

// W8A8 for few tokens on AVX-512 VNNI (w8a8_avx512.cpp): int8 xq [m, k] × int8 wq [n, k], exact int32
// accumulators (acc) or with the fp32 epilogue (y). Return 0, or -2 (nothing written) when the GEMM's instruction
// set is not AVX-512 VNNI (the caller then runs torch._int_mm).
int w8a8_gemm_acc(const int8_t* xq, const int8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t k, int threads);
int w8a8_gemm_f32(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, const float* bias, float* y,
                  int64_t m, int64_t n, int64_t k, int threads);

// Per-row symmetric int8 quantization of x [m, k] (fp32, a8_quantize.cpp): codes [m, k], scale [m]
// (s = (absmax * clip) / 127, 1 for a zero row; q = clamp(rint(x / s), -128, 127)).
void quantize_int8_rows(const float* x, float clip, int8_t* codes, float* scale, int64_t m, int64_t k,
                        int threads);

// transform_quantize_rows with int8 codes (quantize_int8_rows) in place of packed int4 codes.
void transform_quantize_rows_int8(const float* x, int64_t m, int64_t a, int64_t b, const float* left,
                                  const float* right, const float* diag, float clip, int8_t* codes, float* scale,
                                  int threads);

// Stage II's fake quantizer (fake_quant.cpp), fp32 rows x [m, k] with the clip clip[i * clip_stride] (stride 0: one
// clip for every row). Forward: out [m, k] = clamp(rint(x / s), qmin, qmax) * s, scale [m] = s, amax [m] = max|x|,
// bit-identical to the reference. Backward: grad_x [m, k] (or nullptr) and grad_clip_row [m] (or nullptr: the
// row's gt1 * amax, summed by the caller) from the upstream gradient g [m, k] and the forward's scale and amax.
void fake_quant_rows_forward(const float* x, const float* clip, int64_t clip_stride, float* out, float* scale,
                             float* amax, int64_t m, int64_t k, int qmin, int qmax, int threads);
void fake_quant_rows_backward(const float* g, const float* x, const float* clip, int64_t clip_stride,
                              const float* scale, const float* amax, float* grad_x, float* grad_clip_row, int64_t m,
                              int64_t k, int qmin, int qmax, int threads);

// Name of the instruction set the GEMM uses ("avx512vnni", "avx2" or "scalar"): the best this CPU
// supports unless another one was forced with set_gemm_isa.
const char* gemm_isa();

// The instruction sets this CPU can run, best last; writes up to `capacity` names, returns how many exist.
int supported_gemm_isas(const char** names, int capacity);

// Force the GEMM's instruction set by name, or "auto" (or empty) for the best supported. Returns 0, -1 for
// an unknown name, -2 for one this CPU lacks (the choice is then unchanged).
int set_gemm_isa(const char* name);

}  // namespace fair_calib
