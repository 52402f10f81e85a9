/* Device primitives of the W4A4 CUDA kernels that a host emulation has to replace: every inline-PTX
 * instruction the kernels use (one small function each), the dynamic shared-memory declaration and the
 * kernel launch.
 *
 * Device build (nvcc, __CUDA_ARCH__ defined): exactly the asm the kernels always had; nothing from
 * kernels/cuda/emu/ is included (the PTX/SASS is unchanged by this header).
 * Host emulation build (g++ -DFC_HOST_EMULATION -DFC_EMU_ARCH=800|900, see kernels/cuda/emu/): each
 * primitive calls its host implementation in namespace fc_emu (kernels/cuda/emu/cuda_emu.h), which follows
 * the PTX ISA's definition of the instruction (fragment layouts of mma.sync, cp.async groups).
 *
 * FC_ARCH is the architecture the device code is compiled for: __CUDA_ARCH__ in nvcc's device passes,
 * FC_EMU_ARCH in the host emulation, 0 in nvcc's host pass. */
#ifndef FAIR_CALIB_W4A4_DEVICE_H
#define FAIR_CALIB_W4A4_DEVICE_H

#include <stdint.h>

#if defined(__CUDA_ARCH__)
#define FC_ARCH __CUDA_ARCH__
#elif defined(FC_HOST_EMULATION)
#define FC_ARCH FC_EMU_ARCH
#else
#define FC_ARCH 0
#endif

#if defined(FC_HOST_EMULATION)
/* The emulated launch runs every block of the grid on the host before it returns (see cuda_emu.h). */
#define FC_LAUNCH(kernel, grid, block, smem, stream) ::fc_emu::launch(kernel, #kernel, grid, block, smem, stream)
/* The block's dynamic shared memory (one buffer per emulated block, 16-byte aligned). */
#define FC_EXTERN_SHARED(type, name, align) type* const name = static_cast<type*>(::fc_emu::dynamic_shared())
#else
#define FC_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define FC_EXTERN_SHARED(type, name, align) extern __shared__ __align__(align) type name[]
#endif

namespace {

/* mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 (sm_80+): d += A[16 x 64] * B[64 x 8], int4 operands,
 * eight codes per 32-bit register (element i in bits 4i..4i+3). Fragment layout: PTX ISA, "Matrix Fragments
 * for mma.m16n8k64". */
__device__ __forceinline__ void mma_m16n8k64_s4(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
#if defined(FC_HOST_EMULATION)
  ::fc_emu::mma_m16n8k64_s4(d, a0, a1, a2, a3, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (sm_80+): d += A[16 x 32] * B[32 x 8], int8 operands, four
 * per 32-bit register (element i in bits 8i..8i+7). Fragment layout: PTX ISA, "Matrix Fragments for
 * mma.m16n8k32". */
__device__ __forceinline__ void mma_m16n8k32_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
#if defined(FC_HOST_EMULATION)
  ::fc_emu::mma_m16n8k32_s8(d, a0, a1, a2, a3, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* cp.async.cg.shared.global [smem], [gmem], 16, src_bytes (sm_80+): asynchronous copy of src_bytes bytes
 * (0 or 16 here) from global to shared memory, the rest of the 16 bytes zero-filled; complete only after a
 * cp.async.wait_group that covers its commit group. */
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(FC_HOST_EMULATION)
  ::fc_emu::cp_async16(smem, gmem, src_bytes);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}

/* cp.async.commit_group: closes the group of this thread's cp.async issued since the last commit. */
__device__ __forceinline__ void cp_async_commit() {
#if defined(FC_HOST_EMULATION)
  ::fc_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/* cp.async.wait_group N: waits until at most N of this thread's committed groups are pending. */
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(FC_HOST_EMULATION)
  ::fc_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace

#endif /* FAIR_CALIB_W4A4_DEVICE_H */
