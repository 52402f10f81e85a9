// CUDA W4A4 GEMM: packed int4 activations [M, kb] x packed int4 weights [N, kb] -> exact int32
// accumulators -> fp32 epilogue ((acc * sx[m]) * sw[n] (+ bias[n])) -> out dtype.
// No torch headers here (see w4a4_cuda.h). The kernels are the integer GEMM templates of int_gemm.h at
// Prec<4, 4>: mma.sync.m16n8k64 s4 on sm_80/86/89; on sm_90+ (no int4 tensor cores) every fragment word
// sign-extended into two s8x4 words and mma.sync.m16n8k32 s8. Tiled kernel for M > 16 (64 bytes = 128 codes of
// K per stage), split-K small-M kernel for M <= 16.
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

extern "C" size_t fc_w4a4_gemm_workspace_bytes(int64_t m, int64_t n, int64_t kb, int num_sms, int out_dtype) {
  if (kb <= 0 || kb > INT32_MAX / 2) return 0;
  return gemm_workspace_bytes<PrecW4A4>(m, n, 2 * kb, num_sms, out_dtype);
}

extern "C" int fc_w4a4_gemm(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw,
                            const float* bias, void* out, int out_dtype, int64_t m, int64_t n, int64_t kb,
                            void* workspace, int num_sms, void* stream) {
  if (kb <= 0 || kb % 16 != 0 || kb > INT32_MAX / 2) return FC_ERR_BAD_ARGUMENT;
  return gemm<PrecW4A4>(xq, sx, wq, sw, bias, out, out_dtype, m, n, 2 * kb, workspace, num_sms, stream);
}

extern "C" const char* fc_cuda_error_string(int code) {
  if (code == FC_ERR_BAD_ARGUMENT) return "fair_calib CUDA kernel: argument contract violated";
  if (code == FC_ERR_UNSUPPORTED) return "fair_calib CUDA kernel: unsupported shape for this kernel";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
