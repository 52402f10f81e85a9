// CUDA fused online input transform + per-token symmetric quantization: int4 codes packed two per byte (W4A4)
// or int8 codes unpacked (W4A8, W8A8); one template on the code width, the transform shared.
// No torch headers here (see w4a4_cuda.h).
//
// One CTA per token row. Identity transform (optionally with a diagonal): two passes over the row in global
// memory (absmax, then quantize+store); bit-identical to the reference. Kronecker transform: the row is held
// in shared memory as X [a, b] (fp32, after the diagonal), transformed in place as Z = left^T X (column by
// column, one warp per column) then Y = Z right (row by row, one warp per row), each lane keeping its outputs
// in registers until the warp has read its whole column/row; then absmax, quantize and store from shared
// memory. The rounding rule and scale rule are the reference's: s = (absmax * clip) / qmax (1 if 0),
// q = clamp(rint(x / s), -qmax - 1, qmax) with true fp32 division and round-half-to-even (qmax 7 or 127).
#ifdef FC_HOST_EMULATION
#include "emu/cuda_emu.h"  // host emulation of the CUDA built-ins and runtime (tests only, never for nvcc)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
#include <stdint.h>

#include "w4a4_cuda.h"
#include "w4a4_device.h"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPerLane = 8;  // Kronecker factors up to 32 * 8 = 256

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? red[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  return red[0];
}

// The code grid of a width: int4 (stored packed, two per byte) or int8 (stored as is).
template <int BITS>
struct Codes;
template <>
struct Codes<4> {
  static constexpr int kMin = -8, kMax = 7;
  using Out = uint8_t;
};
template <>
struct Codes<8> {
  static constexpr int kMin = -128, kMax = 127;
  using Out = int8_t;
};

template <int BITS>
__device__ __forceinline__ float row_scale(float amax, const float* clip) {
  const float c = clip != nullptr ? *clip : 1.0f;
  const float s = __fdiv_rn(__fmul_rn(amax, c), static_cast<float>(Codes<BITS>::kMax));
  return s == 0.0f ? 1.0f : s;
}

template <int BITS>
__device__ __forceinline__ int code(float v, float s) {
  const int q = __float2int_rn(__fdiv_rn(v, s));  // round half to even, like torch.round
  return q < Codes<BITS>::kMin ? Codes<BITS>::kMin : (q > Codes<BITS>::kMax ? Codes<BITS>::kMax : q);
}

// Quantizes and stores row `row` of k values (value(j): the transformed x~_j) with scale s: int4 codes packed
// [ceil(k/2)] per row (code 2j in the low nibble of byte j), int8 codes [k] per row.
template <int BITS, class Value>
__device__ __forceinline__ void store_row(typename Codes<BITS>::Out* out, int64_t row, int64_t k, float s,
                                          Value value) {
  if constexpr (BITS == 4) {
    const int64_t kb = (k + 1) / 2;
    uint8_t* pr = out + row * kb;
    for (int64_t j = threadIdx.x; j < kb; j += kThreads) {
      const uint32_t lo = static_cast<uint32_t>(code<4>(value(2 * j), s)) & 0x0Fu;
      const uint32_t hi = 2 * j + 1 < k ? static_cast<uint32_t>(code<4>(value(2 * j + 1), s)) & 0x0Fu : 0u;
      pr[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  } else {
    int8_t* pr = out + row * k;
    for (int64_t j = threadIdx.x; j < k; j += kThreads) pr[j] = static_cast<int8_t>(code<8>(value(j), s));
  }
}

template <typename T>
__device__ __forceinline__ float load_x(const T* row, const float* diag, int64_t j) {
  const float v = to_float(row[j]);
  return diag != nullptr ? __fmul_rn(v, diag[j]) : v;
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kThreads)
    quant_identity(const T* __restrict__ x, int64_t k, const float* __restrict__ diag,
                   const float* __restrict__ clip, typename Codes<BITS>::Out* __restrict__ out,
                   float* __restrict__ scale) {
  __shared__ float red[kWarps];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  float amax = 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += kThreads) amax = fmaxf(amax, fabsf(load_x(xr, diag, j)));
  const float s = row_scale<BITS>(block_max(amax, red), clip);
  if (threadIdx.x == 0) scale[row] = s;
  store_row<BITS>(out, row, k, s, [&](int64_t j) { return load_x(xr, diag, j); });
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kThreads)
    quant_kron(const T* __restrict__ x, int a, int b, const float* __restrict__ diag,
               const float* __restrict__ left, const float* __restrict__ right, const float* __restrict__ clip,
               typename Codes<BITS>::Out* __restrict__ out, float* __restrict__ scale) {
  FC_EXTERN_SHARED(float, buf, 4);  // the row, X [a, b] row-major
  __shared__ float red[kWarps];
  const int k = a * b;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int j = threadIdx.x; j < k; j += kThreads) buf[j] = load_x(xr, diag, j);
  __syncthreads();

  // Z = left^T X: Z[i, j] = sum_r left[r, i] X[r, j]; column j is owned by one warp.
  for (int j = warp; j < b; j += kWarps) {
    float acc[kMaxPerLane];
#pragma unroll
    for (int q = 0; q < kMaxPerLane; ++q) acc[q] = 0.0f;
    for (int r = 0; r < a; ++r) {
      const float xv = buf[r * b + j];
#pragma unroll
      for (int q = 0; q < kMaxPerLane; ++q) {
        const int i = lane + 32 * q;
        if (i < a) acc[q] += left[r * a + i] * xv;
      }
    }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < kMaxPerLane; ++q) {
      const int i = lane + 32 * q;
      if (i < a) buf[i * b + j] = acc[q];
    }
    __syncwarp();
  }
  __syncthreads();

  // Y = Z right: Y[i, j] = sum_r Z[i, r] right[r, j]; row i is owned by one warp.
  for (int i = warp; i < a; i += kWarps) {
    float acc[kMaxPerLane];
#pragma unroll
    for (int q = 0; q < kMaxPerLane; ++q) acc[q] = 0.0f;
    for (int r = 0; r < b; ++r) {
      const float zv = buf[i * b + r];
#pragma unroll
      for (int q = 0; q < kMaxPerLane; ++q) {
        const int j = lane + 32 * q;
        if (j < b) acc[q] += zv * right[r * b + j];
      }
    }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < kMaxPerLane; ++q) {
      const int j = lane + 32 * q;
      if (j < b) buf[i * b + j] = acc[q];
    }
    __syncwarp();
  }
  __syncthreads();

  float amax = 0.0f;
  for (int j = threadIdx.x; j < k; j += kThreads) amax = fmaxf(amax, fabsf(buf[j]));
  const float s = row_scale<BITS>(block_max(amax, red), clip);
  if (threadIdx.x == 0) scale[row] = s;
  store_row<BITS>(out, row, k, s, [&](int64_t j) { return buf[j]; });
}

template <typename T, int BITS>
cudaError_t launch(const void* x, int64_t m, int64_t k, const float* diag, const float* left, int64_t a,
                   const float* right, int64_t b, const float* clip, typename Codes<BITS>::Out* out, float* scale,
                   cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  if (left == nullptr) {
    auto quant_identity_kernel = quant_identity<T, BITS>;
    FC_LAUNCH(quant_identity_kernel, static_cast<unsigned>(m), kThreads, 0, stream)(xt, k, diag, clip, out, scale);
    return cudaGetLastError();
  }
  auto quant_kron_kernel = quant_kron<T, BITS>;
  const size_t smem = sizeof(float) * static_cast<size_t>(k);
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(quant_kron_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  FC_LAUNCH(quant_kron_kernel, static_cast<unsigned>(m), kThreads, smem, stream)(
      xt, static_cast<int>(a), static_cast<int>(b), diag, left, right, clip, out, scale);
  return cudaGetLastError();
}

template <int BITS>
int quantize(const void* x, int in_dtype, int64_t m, int64_t k, const float* diag, const float* left, int64_t a,
             const float* right, int64_t b, const float* clip, typename Codes<BITS>::Out* out, float* scale,
             void* stream) {
  if (m < 0 || k <= 0 || m > INT32_MAX || (left == nullptr) != (right == nullptr)) return FC_ERR_BAD_ARGUMENT;
  if (left != nullptr) {
    if (a * b != k) return FC_ERR_BAD_ARGUMENT;
    if (a > 32 * kMaxPerLane || b > 32 * kMaxPerLane) return FC_ERR_UNSUPPORTED;
  }
  if (m == 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (in_dtype) {
    case FC_IN_F32:
      err = launch<float, BITS>(x, m, k, diag, left, a, right, b, clip, out, scale, s);
      break;
    case FC_IN_BF16:
      err = launch<__nv_bfloat16, BITS>(x, m, k, diag, left, a, right, b, clip, out, scale, s);
      break;
    case FC_IN_F16:
      err = launch<__half, BITS>(x, m, k, diag, left, a, right, b, clip, out, scale, s);
      break;
    default:
      return FC_ERR_BAD_ARGUMENT;
  }
  return static_cast<int>(err);
}

}  // namespace

extern "C" int fc_quantize_act_fused_supported(int64_t a, int64_t b, int max_smem_bytes) {
  if (a <= 0 || b <= 0 || a > 32 * kMaxPerLane || b > 32 * kMaxPerLane) return 0;
  // the row in shared memory plus the reduction scratch
  return sizeof(float) * static_cast<size_t>(a * b) + sizeof(float) * kWarps <= static_cast<size_t>(max_smem_bytes);
}

extern "C" int fc_quantize_act(const void* x, int in_dtype, int64_t m, int64_t k, const float* diag,
                               const float* left, int64_t a, const float* right, int64_t b, const float* clip,
                               uint8_t* packed, float* scale, void* stream) {
  return quantize<4>(x, in_dtype, m, k, diag, left, a, right, b, clip, packed, scale, stream);
}

extern "C" int fc_quantize_act_int8(const void* x, int in_dtype, int64_t m, int64_t k, const float* diag,
                                    const float* left, int64_t a, const float* right, int64_t b, const float* clip,
                                    int8_t* codes, float* scale, void* stream) {
  return quantize<8>(x, in_dtype, m, k, diag, left, a, right, b, clip, codes, scale, stream);
}
