// CUDA GEMMs with int8 activations: W4A8 (int8 [M, K] x packed int4 weights [N, K/2]) and W8A8 (int8 [M, K] x
// int8 [N, K]) -> exact int32 accumulators -> the W4A4 fp32 epilogue ((acc * sx[m]) * sw[n] (+ bias[n])) ->
// out dtype. No torch headers here (see w4a4_cuda.h). The kernels are the integer GEMM templates of int_gemm.h
// at Prec<8, 4> and Prec<8, 8>: mma.sync.m16n8k32 s8 on every architecture (sm_80+), the int4 weights
// sign-extended to s8 in registers (even/odd codes) and the int8 activations byte-permuted into the same
// order; tiled kernel for M > 16 (64 codes of K per stage), split-K small-M kernel for M <= 16.
#ifdef FC_HOST_EMULATION
#include "emu/cuda_emu.h"  // host emulation of the CUDA built-ins and runtime (tests only, never for nvcc)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
#include <stdint.h>

#include "int_gemm.h"
#include "w4a4_cuda.h"

extern "C" size_t fc_w4a8_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_sms, int out_dtype) {
  return gemm_workspace_bytes<PrecW4A8>(m, n, k, num_sms, out_dtype);
}

extern "C" int fc_w4a8_gemm(const int8_t* xq, const float* sx, const uint8_t* wq, const float* sw,
                            const float* bias, void* out, int out_dtype, int64_t m, int64_t n, int64_t k,
                            void* workspace, int num_sms, void* stream) {
  return gemm<PrecW4A8>(xq, sx, wq, sw, bias, out, out_dtype, m, n, k, workspace, num_sms, stream);
}

extern "C" size_t fc_w8a8_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_sms, int out_dtype) {
  return gemm_workspace_bytes<PrecW8A8>(m, n, k, num_sms, out_dtype);
}

extern "C" int fc_w8a8_gemm(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw,
                            const float* bias, void* out, int out_dtype, int64_t m, int64_t n, int64_t k,
                            void* workspace, int num_sms, void* stream) {
  return gemm<PrecW8A8>(xq, sx, wq, sw, bias, out, out_dtype, m, n, k, workspace, num_sms, stream);
}
