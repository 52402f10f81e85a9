/* C ABI of the CUDA kernels (the .cu files in kernels/cuda/): W4A4, W4A8 and W8A8 GEMMs, int4 and int8
 * activation quantizers. Plain C types, raw device pointers and a
 * cudaStream_t passed as void*, so the .cu files never include torch headers (seconds instead of minutes
 * to compile) and the binding (kernels/cuda_bindings.cpp) is the only place that knows about tensors.
 *
 * Every function returns 0 on success, a cudaError_t value (> 0) from the launch, or one of the FC_ERR_*
 * codes below. All pointers are device pointers; packed rows are `kb` bytes (two int4 codes per byte, code
 * 2j in the low nibble of byte j, two's complement), row-major and contiguous.
 */
#ifndef FAIR_CALIB_W4A4_CUDA_H
#define FAIR_CALIB_W4A4_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FC_ERR_BAD_ARGUMENT (-1)  /* shape/alignment/dtype contract violated */
#define FC_ERR_UNSUPPORTED (-2)   /* valid, but this kernel cannot handle it (caller falls back) */

/* Output element types of the GEMM. FC_OUT_I32 returns the raw int32 accumulators (no epilogue). */
enum { FC_OUT_F32 = 0, FC_OUT_BF16 = 1, FC_OUT_F16 = 2, FC_OUT_I32 = 3 };
/* Input element types of the quantizer. */
enum { FC_IN_F32 = 0, FC_IN_BF16 = 1, FC_IN_F16 = 2 };

/* Bytes of int32 workspace the GEMM needs for these sizes on a GPU with `num_sms` SMs (0: none). */
size_t fc_w4a4_gemm_workspace_bytes(int64_t m, int64_t n, int64_t kb, int num_sms, int out_dtype);

/* out[m, n] = ((float)acc[m, n] * sx[m]) * sw[n] (+ bias[n]) in fp32, cast to out_dtype, where
 * acc = sum_k qx[m, k] * qw[n, k] is the exact int32 dot product of the packed int4 rows.
 * Contract: kb % 16 == 0 and kb > 0; xq, wq 16-byte aligned; sx [m], sw [n], bias [n] (or NULL) fp32.
 * `workspace` must hold fc_w4a4_gemm_workspace_bytes(...) bytes (NULL when that is 0).
 * sm_80/86/89: int4 mma.sync m16n8k64; sm_90+: nibbles unpacked to int8, mma.sync m16n8k32 s8
 * (Hopper has no int4 tensor cores). M <= 16 uses a split-K kernel without shared memory. */
int fc_w4a4_gemm(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                 void* out, int out_dtype, int64_t m, int64_t n, int64_t kb, void* workspace, int num_sms,
                 void* stream);

/* W4A8: out[m, n] = ((float)acc[m, n] * sx[m]) * sw[n] (+ bias[n]) in fp32, cast to out_dtype, where
 * acc = sum_k qx[m, k] * qw[n, k] is the exact int32 dot product of the int8 activation rows xq [m, k] and the
 * packed int4 weight rows wq [n, k/2] (the W4A4 byte layout).
 * Contract: k % 32 == 0 and k > 0 (zero-pad K otherwise: zero codes add nothing); xq, wq 16-byte aligned;
 * sx [m], sw [n], bias [n] (or NULL) fp32; `workspace` as for fc_w4a4_gemm, sized by
 * fc_w4a8_gemm_workspace_bytes. mma.sync m16n8k32 s8 on every architecture (weights sign-extended in
 * registers). M <= 16 uses a split-K kernel without shared memory. */
size_t fc_w4a8_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_sms, int out_dtype);
int fc_w4a8_gemm(const int8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const float* bias,
                 void* out, int out_dtype, int64_t m, int64_t n, int64_t k, void* workspace, int num_sms,
                 void* stream);

/* W8A8: the same with int8 weight rows wq [n, k]. Contract: k % 16 == 0 and k > 0; otherwise as fc_w4a8_gemm.
 * The int32 accumulators wrap beyond |acc| >= 2^31 (k > 2^17 can overflow; the op refuses those). */
size_t fc_w8a8_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_sms, int out_dtype);
int fc_w8a8_gemm(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, const float* bias,
                 void* out, int out_dtype, int64_t m, int64_t n, int64_t k, void* workspace, int num_sms,
                 void* stream);

/* Whether fc_quantize_act and fc_quantize_act_int8 can apply a Kronecker transform with factors a x a and b x b
 * in one kernel on a GPU whose opt-in shared memory per block is `max_smem_bytes` (the row is held in shared
 * memory). */
int fc_quantize_act_fused_supported(int64_t a, int64_t b, int max_smem_bytes);

/* Online input transform + per-token symmetric int4 quantization + packing of x [m, k] (row-major):
 *   x~ = (x (.) diag) . (left (x) right)   (each optional; left [a, a] and right [b, b] come together,
 *                                           a * b == k; computed as vec(left^T . X . right), X = row as [a, b])
 *   s  = (max|x~| * clip) / 7 in fp32 (1 if 0),  q = clamp(rint(x~ / s), -8, 7)  (true division, half-even)
 * packed [m, ceil(k/2)], scale [m] fp32. `clip` is a device pointer to one fp32 value or NULL (1).
 * Identity (left == NULL) is bit-identical to the reference; with a transform the fp32 sums run in a
 * different order than torch's matmul (tolerance, see the tests). */
int fc_quantize_act(const void* x, int in_dtype, int64_t m, int64_t k, const float* diag, const float* left,
                    int64_t a, const float* right, int64_t b, const float* clip, uint8_t* packed, float* scale,
                    void* stream);

/* The same online transform + per-token symmetric int8 quantization of x [m, k]:
 *   s = (max|x~| * clip) / 127 in fp32 (1 if 0),  q = clamp(rint(x~ / s), -128, 127)
 * codes [m, k] int8 (unpacked, row-major), scale [m] fp32. Arguments, return codes and exactness as
 * fc_quantize_act. */
int fc_quantize_act_int8(const void* x, int in_dtype, int64_t m, int64_t k, const float* diag, const float* left,
                         int64_t a, const float* right, int64_t b, const float* clip, int8_t* codes, float* scale,
                         void* stream);

/* Human-readable message for a return code. */
const char* fc_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* FAIR_CALIB_W4A4_CUDA_H */
