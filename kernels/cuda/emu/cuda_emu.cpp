// Host emulation of the CUDA execution model for the W4A4 kernels (declarations and model: cuda_emu.h).
//
// One block at a time; its threads are fibers (own stacks, switched in user space) on the calling host thread. The scheduler sweeps
// the block's threads in the configured order and resumes every ready one, which runs until it reaches a
// barrier (__syncthreads, or a warp operation), exits, or trips a check. A block barrier releases when every
// thread that has not exited arrived; a warp operation completes when all 32 lanes arrived, and the last
// lane to arrive computes the results of all 32 (mma.sync: the whole 16x8 tile) from the operands the lanes
// left in the warp's exchange buffer (two buffers, alternating, so a fast lane's next operation never
// overwrites operands a slow lane has not read yet).
#include "cuda_emu.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace fc_emu {

ThreadCtx* current = nullptr;
dim3 grid_dim, block_dim;

namespace {

// ------------------------------------------------------------------------------------- fiber contexts
// x86-64: a minimal switch of what the System V ABI has a callee keep (rbx, rbp, r12-r15, the stack pointer,
// MXCSR and the x87 control word); elsewhere (or with -DFC_EMU_UCONTEXT) ucontext, which also saves the
// signal mask: a system call per switch, several times slower.
#if defined(__x86_64__) && !defined(FC_EMU_UCONTEXT)
extern "C" __attribute__((visibility("hidden"))) void fc_emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl fc_emu_switch_stack
  .hidden fc_emu_switch_stack
  .type fc_emu_switch_stack, @function
fc_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fc_emu_switch_stack, .-fc_emu_switch_stack
)");

struct Context {
  void* sp = nullptr;
};

// A fresh context whose first switch-in "returns" into entry() as if called (stack 16-byte aligned + 8).
void context_init(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack + bytes)) & ~uintptr_t{15});
  *--top = 0;                                      // entry's return address: entry never returns
  *--top = reinterpret_cast<uint64_t>(entry);      // popped by ret
  for (int i = 0; i < 6; ++i) *--top = 0;          // rbp, rbx, r12-r15
  *--top = 0x1F80u | (uint64_t{0x037Fu} << 32);    // MXCSR default, x87 control word default
  c.sp = top;
}

inline void context_switch(Context& from, Context& to) { fc_emu_switch_stack(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void context_init(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;  // entry never returns
  makecontext(&c.uc, entry, 0);
}

inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// Shared-memory limits of the emulated architecture (CUDA C++ Programming Guide, "Technical
// Specifications per Compute Capability"): 48 KB without opting in; opt-in maximum per block.
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kOptinSmem = FC_EMU_ARCH >= 900 ? 227 * 1024 : (FC_EMU_ARCH == 800 ? 163 * 1024 : 99 * 1024);
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;
constexpr int kSmemFill = 0x7B;  // dynamic shared memory before every block (cuda_emu.h)

enum class St { Ready, BlockBarrier, WarpOp, Done };
enum class Op { Sync, Shfl, MmaS4, MmaS8 };

struct CpAsync {
  uint8_t* dst;
  const uint8_t* src;
  int bytes;
};

struct Fiber {
  ThreadCtx ctx;
  Context uc;
  St state;
  int lane, warp;
  unsigned seq;                              // warp operations this thread has completed
  std::vector<CpAsync> open;                 // cp.async issued since the last commit_group
  std::deque<std::vector<CpAsync>> pending;  // committed groups, oldest first
};

struct Slot {  // one lane's operands and results of one warp operation
  Op op;
  unsigned mask, seq;
  uint32_t in[6];  // shfl: in[0] value, in[1] lane mask, in[2] width; mma: a0..a3, b0, b1
  int32_t c[4];    // mma accumulators in; results out
};

struct Warp {
  int arrived;
  Slot slot[2][32];
};

struct LaunchRecord {
  std::string name;
  dim3 grid, block;
  size_t smem;
};

struct Sched {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<char> stacks;
  Context main;
  Fiber* running = nullptr;
  int block_arrived = 0, alive = 0;
  std::vector<uint4> smem;
  size_t smem_bytes = 0;
  bool failed = false;
  std::string message;
  cudaError_t last_error = cudaSuccess;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  int order = 0;  // 0 run-ahead forward, 1 run-ahead reverse, 2 round-robin sweeps, 3 shuffled sweeps
  std::mt19937_64 rng{0};
  std::unordered_map<const void*, int> max_dynamic_smem;
  std::vector<LaunchRecord> log;
  long long switches = 0, warp_ops = 0;
} S;

void fail(const std::string& msg) {
  if (!S.failed) {
    S.failed = true;
    char where[96] = "";
    if (S.running != nullptr)
      snprintf(where, sizeof(where), " (block %u,%u,%u thread %u)", S.running->ctx.block_idx.x,
               S.running->ctx.block_idx.y, S.running->ctx.block_idx.z, S.running->ctx.thread_idx.x);
    S.message = msg + where;
  }
}

Fiber& self() {
  if (S.running == nullptr) {
    fprintf(stderr, "fc_emu: device function called outside an emulated launch\n");
    abort();
  }
  return *S.running;
}

void yield() {
  Fiber& f = self();
  ++S.switches;
  context_switch(f.uc, S.main);
}

// A check failed inside a thread: stop the block (the fiber is never resumed).
[[noreturn]] void fail_and_stop(const std::string& msg) {
  fail(msg);
  Fiber& f = self();
  f.state = St::Done;
  context_switch(f.uc, S.main);
  abort();  // unreachable: a failed launch never resumes its fibers
}

void release_block_barrier() {
  if (S.block_arrived > 0 && S.block_arrived == S.alive) {
    for (Fiber& f : S.fibers)
      if (f.state == St::BlockBarrier) f.state = St::Ready;
    S.block_arrived = 0;
  }
}

void fiber_entry() {
  S.body(S.body_ctx);
  Fiber& f = self();
  f.state = St::Done;
  f.open.clear();  // copies never waited for: the thread exits without reading them
  f.pending.clear();
  --S.alive;
  release_block_barrier();
  context_switch(f.uc, S.main);
  abort();  // unreachable: a finished thread is never resumed
}

// ------------------------------------------------------------------------------- PTX fragment layouts
// PTX ISA, "Matrix Fragments for mma.m16n8k64" (.s4) and "... mma.m16n8k32" (.s8), with
// groupID = laneid >> 2 and threadID_in_group = laneid % 4. Element i of a fragment sits in register
// i / (elements per register), at bit offset (i % per register) * element bits ("low to high").
struct Shape {
  int k;     // K of the instruction
  int bits;  // element width
};
constexpr Shape kS4{64, 4}, kS8{32, 8};

// A (16 x K, row-major): four registers per lane.
void a_pos(const Shape& s, int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane % 4;
  if (s.bits == 4) {  // a0..a31
    *row = (i < 8 || (i >= 16 && i < 24)) ? g : g + 8;
    *col = i < 16 ? t * 8 + (i & 0x7) : t * 8 + (i & 0x7) + 32;
  } else {  // a0..a15
    *row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
    *col = i < 8 ? t * 4 + (i & 0x3) : t * 4 + (i & 0x3) + 16;
  }
}

// B (K x 8, column-major): two registers per lane.
void b_pos(const Shape& s, int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane % 4;
  if (s.bits == 4) {  // b0..b15
    *row = i < 8 ? t * 8 + (i & 0x7) : t * 8 + (i & 0x7) + 32;
  } else {  // b0..b7
    *row = i < 4 ? t * 4 + (i & 0x3) : t * 4 + (i & 0x3) + 16;
  }
  *col = g;
}

// C / D (16 x 8, s32): four registers per lane (same layout for both shapes).
void c_pos(int lane, int i, int* row, int* col) {
  const int g = lane >> 2, t = lane % 4;
  *row = i < 2 ? g : g + 8;
  *col = t * 2 + (i & 0x1);
}

int element(uint32_t reg, int j, int bits) {  // signed element j of a register
  const uint32_t v = (reg >> (j * bits)) & ((1u << bits) - 1u);
  return (v & (1u << (bits - 1))) ? static_cast<int>(v) - (1 << bits) : static_cast<int>(v);
}

void mma_tile(const Shape& s, Slot* lanes) {
  const int per_reg = 32 / s.bits;
  int a[16][64], b[64][8];
  uint32_t c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4 * per_reg; ++i) {
      int r, col;
      a_pos(s, lane, i, &r, &col);
      a[r][col] = element(lanes[lane].in[i / per_reg], i % per_reg, s.bits);
    }
    for (int i = 0; i < 2 * per_reg; ++i) {
      int r, col;
      b_pos(s, lane, i, &r, &col);
      b[r][col] = element(lanes[lane].in[4 + i / per_reg], i % per_reg, s.bits);
    }
    for (int i = 0; i < 4; ++i) {
      int r, col;
      c_pos(lane, i, &r, &col);
      c[r][col] = static_cast<uint32_t>(lanes[lane].c[i]);
    }
  }
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 8; ++col) {
      uint32_t acc = c[r][col];  // .s32 accumulation wraps modulo 2^32 (no .satfinite)
      for (int k = 0; k < s.k; ++k) acc += static_cast<uint32_t>(a[r][k] * b[k][col]);
      c[r][col] = acc;
    }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      int r, col;
      c_pos(lane, i, &r, &col);
      lanes[lane].c[i] = static_cast<int32_t>(c[r][col]);
    }
}

void complete_warp_op(Warp& w, int parity, int warp_index) {
  Slot* lanes = w.slot[parity];
  for (int lane = 0; lane < 32; ++lane) {
    if (lanes[lane].op != lanes[0].op || lanes[lane].seq != lanes[0].seq || lanes[lane].mask != lanes[0].mask) {
      fail("warp " + std::to_string(warp_index) + ": lanes 0 and " + std::to_string(lane) +
           " are in different warp-synchronous operations (divergent __syncwarp/__shfl_sync/mma.sync)");
      return;
    }
  }
  ++S.warp_ops;
  switch (lanes[0].op) {
    case Op::Sync:
      break;
    case Op::Shfl: {
      uint32_t out[32];
      for (int lane = 0; lane < 32; ++lane) {
        const int width = static_cast<int>(lanes[lane].in[2]);
        const int src = lane ^ static_cast<int>(lanes[lane].in[1]);
        // __shfl_xor_sync: a source lane outside the caller's width-segment returns the caller's own value
        out[lane] = (src / width == lane / width && src < 32) ? lanes[src].in[0] : lanes[lane].in[0];
      }
      for (int lane = 0; lane < 32; ++lane) lanes[lane].in[0] = out[lane];
      break;
    }
    case Op::MmaS4:
      mma_tile(kS4, lanes);
      break;
    case Op::MmaS8:
      mma_tile(kS8, lanes);
      break;
  }
}

// This lane's slot of its warp's current exchange buffer.
Slot& my_slot(Op op, unsigned mask) {
  Fiber& f = self();
  if (mask != 0xffffffffu) fail_and_stop("warp operation with a partial mask: the W4A4 kernels use full warps only");
  const int threads = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  if (threads % 32 != 0) fail_and_stop("warp operation in a block whose size is not a multiple of 32");
  Slot& s = S.warps[f.warp].slot[f.seq & 1][f.lane];
  s.op = op;
  s.mask = mask;
  s.seq = f.seq;
  return s;
}

// Arrive at the warp operation whose operands are in my_slot(); returns once all 32 lanes arrived and the
// results are in the slot.
void warp_arrive() {
  Fiber& f = self();
  Warp& w = S.warps[f.warp];
  f.state = St::WarpOp;
  if (++w.arrived == 32) {
    w.arrived = 0;
    complete_warp_op(w, f.seq & 1, f.warp);
    for (int lane = 0; lane < 32; ++lane) S.fibers[f.warp * 32 + lane].state = St::Ready;
    if (S.failed) fail_and_stop(S.message);
  }
  yield();
}

void do_copies(const std::vector<CpAsync>& group) {
  for (const CpAsync& c : group) {
    if (c.bytes > 0) memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    memset(c.dst + c.bytes, 0, static_cast<size_t>(16 - c.bytes));
  }
}

std::vector<int> sweep_order(int n) {
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (S.order == 3) std::shuffle(order.begin(), order.end(), S.rng);
  return order;
}

void run_block(dim3 block_idx, int threads) {
  S.fibers.resize(static_cast<size_t>(threads));
  S.warps.assign(static_cast<size_t>((threads + 31) / 32), Warp{});
  const size_t stack_total = static_cast<size_t>(threads) * kStackBytes;
  if (S.stacks.size() < stack_total) S.stacks.resize(stack_total);
  memset(static_cast<void*>(S.smem.data()), kSmemFill, S.smem.size() * sizeof(uint4));
  for (int t = 0; t < threads; ++t) {
    Fiber& f = S.fibers[static_cast<size_t>(t)];
    f.ctx.block_idx = uint3{block_idx.x, block_idx.y, block_idx.z};
    f.ctx.thread_idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
    f.state = St::Ready;
    f.lane = t % 32;
    f.warp = t / 32;
    f.seq = 0;
    f.open.clear();
    f.pending.clear();
    context_init(f.uc, S.stacks.data() + static_cast<size_t>(t) * kStackBytes, kStackBytes, fiber_entry);
  }
  S.alive = threads;
  S.block_arrived = 0;
  const auto resume = [](Fiber& f) {
    S.running = &f;
    current = &f.ctx;
    ++S.switches;
    context_switch(S.main, f.uc);
    S.running = nullptr;
  };
  while (S.alive > 0) {
    bool ran = false;
    if (S.order <= 1) {  // run-ahead: always the first ready thread in index order (or reverse order)
      for (;;) {
        int pick = -1;
        for (int i = 0; i < threads && pick < 0; ++i) {
          const int t = S.order == 0 ? i : threads - 1 - i;
          if (S.fibers[static_cast<size_t>(t)].state == St::Ready) pick = t;
        }
        if (pick < 0) break;
        resume(S.fibers[static_cast<size_t>(pick)]);
        ran = true;
        if (S.failed) return;
      }
    } else {  // sweeps: every ready thread once per sweep, in index order or shuffled
      for (int t : sweep_order(threads)) {
        Fiber& f = S.fibers[static_cast<size_t>(t)];
        if (f.state != St::Ready) continue;
        resume(f);
        ran = true;
        if (S.failed) return;
      }
    }
    if (!ran && S.alive > 0) {
      int at_bar = 0, in_warp = 0;
      for (const Fiber& f : S.fibers) {
        at_bar += f.state == St::BlockBarrier;
        in_warp += f.state == St::WarpOp;
      }
      char msg[200];
      snprintf(msg, sizeof(msg),
               "deadlock in block (%u,%u,%u): %d threads wait at __syncthreads, %d in warp operations, %d exited",
               block_idx.x, block_idx.y, block_idx.z, at_bar, in_warp, threads - S.alive);
      fail(msg);
      return;
    }
  }
}

}  // namespace

// --------------------------------------------------------------------------------- device functions
void* dynamic_shared() {
  self();
  return S.smem_bytes > 0 ? static_cast<void*>(S.smem.data()) : nullptr;
}

void syncthreads() {
  Fiber& f = self();
  f.state = St::BlockBarrier;
  ++S.block_arrived;
  release_block_barrier();
  yield();
}

void syncwarp(unsigned mask) {
  my_slot(Op::Sync, mask);
  warp_arrive();
  ++self().seq;
}

uint32_t shfl_xor(unsigned mask, uint32_t v, int lane_mask, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail_and_stop("__shfl_xor_sync: width must be a power of 2 <= 32");
  Slot& s = my_slot(Op::Shfl, mask);
  s.in[0] = v;
  s.in[1] = static_cast<uint32_t>(lane_mask);
  s.in[2] = static_cast<uint32_t>(width);
  warp_arrive();
  const uint32_t out = s.in[0];
  ++self().seq;
  return out;
}

static void mma(Op op, int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  Slot& s = my_slot(op, 0xffffffffu);
  const uint32_t in[6] = {a0, a1, a2, a3, b0, b1};
  memcpy(s.in, in, sizeof(in));
  memcpy(s.c, d, sizeof(s.c));
  warp_arrive();
  memcpy(d, s.c, sizeof(s.c));
  ++self().seq;
}

void mma_m16n8k64_s4(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  mma(Op::MmaS4, d, a0, a1, a2, a3, b0, b1);
}

void mma_m16n8k32_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  mma(Op::MmaS8, d, a0, a1, a2, a3, b0, b1);
}

void cp_async16(void* smem, const void* gmem, int src_bytes) {
  Fiber& f = self();
  uint8_t* dst = static_cast<uint8_t*>(smem);
  const uint8_t* base = reinterpret_cast<const uint8_t*>(S.smem.data());
  if (dst < base || dst + 16 > base + S.smem_bytes)
    fail_and_stop("cp.async destination outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(gmem) % 16 != 0)
    fail_and_stop("cp.async.cg with cp-size 16 needs 16-byte aligned addresses");
  if (src_bytes < 0 || src_bytes > 16) fail_and_stop("cp.async src-size must be in [0, 16]");
  f.open.push_back(CpAsync{dst, static_cast<const uint8_t*>(gmem), src_bytes});
}

void cp_async_commit() {
  Fiber& f = self();
  f.pending.push_back(std::move(f.open));
  f.open.clear();
}

void cp_async_wait(int n) {
  Fiber& f = self();
  while (f.pending.size() > static_cast<size_t>(n)) {
    do_copies(f.pending.front());
    f.pending.pop_front();
  }
}

void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
    fail_and_stop(std::string(what) + ": address not aligned to its " + std::to_string(bytes) + "-byte access");
}

// ---------------------------------------------------------------------------------------- host side
cudaError_t set_max_dynamic_shared(const void* fn, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kOptinSmem) return cudaErrorInvalidValue;
  S.max_dynamic_smem[fn] = bytes;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const cudaError_t e = S.last_error;
  S.last_error = cudaSuccess;
  return e;
}

void run_grid(const char* name, const void* fn, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx) {
  S.log.push_back(LaunchRecord{name, grid, block, smem});
  S.failed = false;
  S.message.clear();
  const long long threads = static_cast<long long>(block.x) * block.y * block.z;
  const auto it = S.max_dynamic_smem.find(fn);
  const size_t smem_limit = it != S.max_dynamic_smem.end() ? static_cast<size_t>(it->second) : kDefaultSmem;
  if (threads <= 0 || threads > kMaxThreads || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    S.message = "invalid launch configuration (grid or block size)";
    S.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem > smem_limit) {
    S.message = "dynamic shared memory " + std::to_string(smem) + " bytes over the limit " +
                std::to_string(smem_limit) + " (cudaFuncAttributeMaxDynamicSharedMemorySize not raised?)";
    S.last_error = cudaErrorInvalidValue;
    return;
  }
  S.smem_bytes = smem;
  S.smem.assign((smem + 15) / 16, uint4{0, 0, 0, 0});
  S.body = body;
  S.body_ctx = ctx;
  grid_dim = grid;
  block_dim = block;
  for (unsigned z = 0; z < grid.z && !S.failed; ++z)
    for (unsigned y = 0; y < grid.y && !S.failed; ++y)
      for (unsigned x = 0; x < grid.x && !S.failed; ++x) run_block(dim3(x, y, z), static_cast<int>(threads));
  current = nullptr;
  if (S.failed) S.last_error = cudaErrorLaunchFailure;
}

}  // namespace fc_emu

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulated)";
    default: return "unknown error (emulated)";
  }
}

// ---------------------------------------------------------------------- controls for the test driver
extern "C" {

int fc_emu_arch() { return FC_EMU_ARCH; }

// Order in which a block's ready threads run. 0 / 1: run-ahead, always the lowest (1: highest) ready thread,
// so the first warp runs up to its next block barrier before the next warp starts (a missing __syncthreads
// reads what later warps have not written); 2: round-robin sweeps over the ready threads (warps advance in
// lockstep); 3: sweeps in an order shuffled with `seed`.
void fc_emu_set_schedule(int order, unsigned long long seed) {
  fc_emu::S.order = order;
  fc_emu::S.rng.seed(seed);
}

const char* fc_emu_last_message() { return fc_emu::S.message.c_str(); }

int fc_emu_launch_count() { return static_cast<int>(fc_emu::S.log.size()); }

// Launch i of the log: writes the kernel's name (as written at the launch) and
// dims = {grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic shared bytes}.
int fc_emu_launch_info(int i, char* name, int name_len, long long* dims) {
  if (i < 0 || i >= fc_emu_launch_count()) return -1;
  const auto& r = fc_emu::S.log[static_cast<size_t>(i)];
  snprintf(name, static_cast<size_t>(name_len), "%s", r.name.c_str());
  const long long v[7] = {r.grid.x, r.grid.y, r.grid.z, r.block.x, r.block.y, r.block.z,
                          static_cast<long long>(r.smem)};
  memcpy(dims, v, sizeof(v));
  return 0;
}

void fc_emu_clear_log() { fc_emu::S.log.clear(); }

// Counters since load: {fiber switches, completed warp operations}.
void fc_emu_counters(long long* out) {
  out[0] = fc_emu::S.switches;
  out[1] = fc_emu::S.warp_ops;
}

// Checks that the fragment layouts map the 32 lanes' elements one-to-one onto A, B and C: 0 when they do.
int fc_emu_check_layouts() {
  using namespace fc_emu;
  for (const Shape& s : {kS4, kS8}) {
    const int per_reg = 32 / s.bits;
    std::vector<int> a(16 * 64, 0), b(64 * 8, 0), c(16 * 8, 0);
    for (int lane = 0; lane < 32; ++lane) {
      int r, col;
      for (int i = 0; i < 4 * per_reg; ++i) {
        a_pos(s, lane, i, &r, &col);
        if (r < 0 || r >= 16 || col < 0 || col >= s.k) return 1;
        ++a[static_cast<size_t>(r * 64 + col)];
      }
      for (int i = 0; i < 2 * per_reg; ++i) {
        b_pos(s, lane, i, &r, &col);
        if (r < 0 || r >= s.k || col < 0 || col >= 8) return 2;
        ++b[static_cast<size_t>(r * 8 + col)];
      }
      for (int i = 0; i < 4; ++i) {
        c_pos(lane, i, &r, &col);
        ++c[static_cast<size_t>(r * 8 + col)];
      }
    }
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < s.k; ++k)
        if (a[static_cast<size_t>(r * 64 + k)] != 1) return 3;
    for (int k = 0; k < s.k; ++k)
      for (int col = 0; col < 8; ++col)
        if (b[static_cast<size_t>(k * 8 + col)] != 1) return 4;
    for (int v : c)
      if (v != 1) return 5;
  }
  return 0;
}

}  // extern "C"
