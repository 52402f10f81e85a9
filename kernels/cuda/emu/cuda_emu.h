// Host emulation of the CUDA subset the W4A4 kernels use, so that the real kernel source
// (kernels/cuda/*.cu) compiles with g++ and runs on a CPU: g++ -x c++ -DFC_HOST_EMULATION -DFC_EMU_ARCH=800
// (or 900) ... kernels/cuda/emu/cuda_emu.cpp. Never included in the device build (nvcc).
//
// Execution model (cuda_emu.cpp): a launch runs the grid's blocks one after another; the threads of a block
// are cooperative fibers, each running until its next barrier: __syncthreads waits for every
// thread of the block, warp-level operations (__syncwarp, __shfl_xor_sync, mma.sync) for all 32 lanes of the
// warp, which exchange their operands through a per-warp buffer. The order in which ready threads run is
// forward, reverse or a seeded shuffle (fc_emu_set_schedule), so a missing barrier reads data that another
// thread has not written yet in at least one order. cp.async copies are deferred to the cp.async.wait_group
// that covers them, so a missing wait reads stale shared memory. Dynamic shared memory is refilled with 0x7B
// bytes before every block (int4 codes 7 and -5, fp32 1.3e36), so a read before the write changes the
// result; static __shared__ variables are function-local statics (zero at load, then what the previous
// block left: g++ ignores a section attribute on statics of templates, so they cannot be refilled).
// mma.sync follows the PTX ISA fragment layouts (row, column and K element of every lane and register).
//
// Checked at run time (the launch then fails with cudaErrorLaunchFailure and fc_emu_last_message() says
// why): warp operations with a partial mask or lanes in different operations, a barrier some threads never
// reach (deadlock), cp.async addresses not 16-byte aligned or outside the dynamic shared memory, misaligned
// __ldg vector loads, launches over the block-size or shared-memory limits of the emulated architecture.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <utility>

#if !defined(FC_EMU_ARCH)
#error "the host emulation needs FC_EMU_ARCH (800 for the sm_80-89 int4 mma path, 900 for the sm_90 int8 path)"
#endif

// ------------------------------------------------------------------------------------ CUDA C++ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time on one host thread: one instance per block
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------------------------------- vector types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct __attribute__((aligned(8))) uint2 {
  unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ------------------------------------------------------------------------------------- runtime subset
typedef int cudaError_t;
enum : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
             cudaErrorLaunchFailure = 719 };
typedef struct fc_emu_stream* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace fc_emu {

// State of the thread (fiber) that is running.
struct ThreadCtx {
  uint3 thread_idx;
  uint3 block_idx;
};
extern ThreadCtx* current;  // the running thread
extern dim3 grid_dim, block_dim;

void* dynamic_shared();
void syncthreads();
void syncwarp(unsigned mask);
uint32_t shfl_xor(unsigned mask, uint32_t v, int lane_mask, int width);
void mma_m16n8k64_s4(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);
void mma_m16n8k32_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);
void cp_async16(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
void check_aligned(const void* p, size_t bytes, const char* what);  // stops the launch when p % bytes != 0

cudaError_t set_max_dynamic_shared(const void* fn, int bytes);
cudaError_t take_last_error();
// Runs body(ctx) as every thread of every block of the grid (`name`: the kernel as written at the launch,
// for the launch log); the error is kept for cudaGetLastError.
void run_grid(const char* name, const void* fn, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx);

// kernel<<<grid, block, smem, stream>>>(args...) is FC_LAUNCH(kernel, grid, block, smem, stream)(args...):
// the arguments are converted to the kernel's parameter types once, like a launch's parameter buffer.
template <class... P>
struct Launch {
  void (*fn)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;
  template <class... A>
  void operator()(A&&... args) const {
    const std::tuple<P...> params(std::forward<A>(args)...);
    auto call = [&]() { std::apply(fn, params); };
    run_grid(name, reinterpret_cast<const void*>(fn), grid, block, smem,
             [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }
};
template <class... P>
Launch<P...> launch(void (*fn)(P...), const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return Launch<P...>{fn, name, grid, block, smem};
}

}  // namespace fc_emu

#define threadIdx (::fc_emu::current->thread_idx)
#define blockIdx (::fc_emu::current->block_idx)
#define blockDim (::fc_emu::block_dim)
#define gridDim (::fc_emu::grid_dim)

template <class T>
inline cudaError_t cudaFuncSetAttribute(T* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::fc_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(fn), value);
}
inline cudaError_t cudaGetLastError() { return ::fc_emu::take_last_error(); }
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  memset(p, value, bytes);
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t err);

// --------------------------------------------------------------------------------- device functions
inline void __syncthreads() { ::fc_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fc_emu::syncwarp(mask); }
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
  uint32_t u;
  memcpy(&u, &v, 4);
  u = ::fc_emu::shfl_xor(mask, u, lane_mask, width);
  memcpy(&v, &u, 4);
  return v;
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32) {
  return static_cast<int>(::fc_emu::shfl_xor(mask, static_cast<uint32_t>(v), lane_mask, width));
}
inline int atomicAdd(int* p, int v) {  // fibers never preempt each other: a plain read-modify-write is atomic
  const int old = *p;
  *p = static_cast<int>(static_cast<uint32_t>(old) + static_cast<uint32_t>(v));
  return old;
}
template <class T>
inline T __ldg(const T* p) {  // ld.global.nc: a misaligned vector load faults on the device
  ::fc_emu::check_aligned(p, sizeof(T), "__ldg");
  return *p;
}
// prmt.b32 (default mode): byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {y, x} (x: bytes 0-3).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// IEEE fp32 with round-to-nearest-even (the build uses -ffp-contract=off, so nothing is fused into an FMA;
// the kernels' plain `a += b * c` may be contracted by nvcc, which only the transform's tolerance covers).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int v) { return static_cast<float>(v); }
// cvt.rni.s32.f32: round half to even, NaN -> 0, saturating to the int32 range (PTX ISA, cvt).
inline int __float2int_rn(float v) {
  if (v != v) return 0;
  const float r = nearbyintf(v);
  if (r >= 2147483648.0f) return INT32_MAX;
  if (r < -2147483648.0f) return INT32_MIN;
  return static_cast<int>(r);
}

// ---------------------------------------------------------------------------------- half and bfloat16
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};
inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // IEEE binary16, round to nearest even (libgcc / F16C)
  __half r;
  memcpy(&r.x, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 v;
  memcpy(&v, &h.x, 2);
  return static_cast<float>(v);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.x = static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
  } else {
    r.x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
  }
  return r;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.x) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
