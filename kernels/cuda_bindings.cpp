// Python bindings of the CUDA kernels: W4A4, W4A8 and W8A8 GEMMs, int4 and int8 activation quantizers
// (compiled only into a CUDA build of the extension, with FAIR_CALIB_WITH_CUDA defined). This file and
// bindings.cpp are the only ones that include torch headers; the kernels behind kernels/cuda/w4a4_cuda.h take
// raw device pointers and a stream.
#include <torch/extension.h>

// c10/cuda only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers that a bare CUDA
// toolkit may lack): the current stream, the device guard, and device attributes from the runtime.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/w4a4_cuda.h"

namespace {

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, "fair_calib_hf CUDA ", what, " failed: ", fc_cuda_error_string(rc), " (", rc, ")");
}

int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  TORCH_CHECK(cudaGetDevice(&dev) == cudaSuccess, "cudaGetDevice failed");
  TORCH_CHECK(cudaDeviceGetAttribute(&value, attr, dev) == cudaSuccess, "cudaDeviceGetAttribute failed");
  return value;
}

void check_device() {
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  TORCH_CHECK(major >= 8, "fair_calib_hf CUDA kernels need compute capability >= 8.0, got ", major, ".",
              device_attribute(cudaDevAttrComputeCapabilityMinor));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_packed(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == torch::kUInt8, name, " must be uint8, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D");
}

// The GEMM kernels read whole 16-byte vectors: rows of a multiple of 16 bytes, 16-byte aligned. Real layer
// widths (K a multiple of 32) already qualify; anything else is copied into a zero-padded buffer (zero
// codes add nothing to the dot products, so the result is unchanged).
torch::Tensor padded_cols(const torch::Tensor& t, int64_t width) {
  auto c = t.contiguous();
  if (c.size(1) == width && reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0) return c;
  auto padded = torch::zeros({c.size(0), width}, c.options());
  if (c.size(1) > 0) padded.narrow(1, 0, c.size(1)).copy_(c);
  return padded;
}

torch::Tensor aligned_packed(const torch::Tensor& t) {
  const int64_t kb = t.size(1);
  return padded_cols(t, kb == 0 ? 16 : (kb + 15) / 16 * 16);
}

int out_code(torch::ScalarType out_type) {
  switch (out_type) {
    case torch::kFloat32: return FC_OUT_F32;
    case torch::kBFloat16: return FC_OUT_BF16;
    case torch::kFloat16: return FC_OUT_F16;
    case torch::kInt32: return FC_OUT_I32;
    default: TORCH_CHECK(false, "unsupported output dtype ", out_type);
  }
}

// One GEMM entry of the C ABI (w4a4_cuda.h): its workspace query and the GEMM; `k` as the entry takes it.
using GemmFn = int (*)(const void*, const float*, const void*, const float*, const float*, void*, int, int64_t,
                       int64_t, int64_t, void*, int, void*);
using WorkspaceFn = size_t (*)(int64_t, int64_t, int64_t, int, int);

int w4a4_entry(const void* xq, const float* sx, const void* wq, const float* sw, const float* bias, void* out,
               int code, int64_t m, int64_t n, int64_t kb, void* ws, int sms, void* stream) {
  return fc_w4a4_gemm(static_cast<const uint8_t*>(xq), sx, static_cast<const uint8_t*>(wq), sw, bias, out, code, m,
                      n, kb, ws, sms, stream);
}
int w4a8_entry(const void* xq, const float* sx, const void* wq, const float* sw, const float* bias, void* out,
               int code, int64_t m, int64_t n, int64_t k, void* ws, int sms, void* stream) {
  return fc_w4a8_gemm(static_cast<const int8_t*>(xq), sx, static_cast<const uint8_t*>(wq), sw, bias, out, code, m,
                      n, k, ws, sms, stream);
}
int w8a8_entry(const void* xq, const float* sx, const void* wq, const float* sw, const float* bias, void* out,
               int code, int64_t m, int64_t n, int64_t k, void* ws, int sms, void* stream) {
  return fc_w8a8_gemm(static_cast<const int8_t*>(xq), sx, static_cast<const int8_t*>(wq), sw, bias, out, code, m,
                      n, k, ws, sms, stream);
}

// xq, wq: padded, aligned operands; k: what the entry takes (packed bytes for W4A4, codes otherwise).
torch::Tensor launch_gemm(GemmFn fn, WorkspaceFn ws_fn, const char* what, const torch::Tensor& xq,
                          const torch::Tensor& wq, int64_t k, const float* sx, const float* sw, const float* bias,
                          torch::ScalarType out_type) {
  const int64_t m = xq.size(0), n = wq.size(0);
  const int code = out_code(out_type);
  auto out = torch::empty({m, n}, xq.options().dtype(out_type));
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const size_t ws_bytes = ws_fn(m, n, k, sms, code);
  torch::Tensor ws;
  if (ws_bytes > 0) ws = torch::empty({static_cast<int64_t>(ws_bytes)}, xq.options().dtype(torch::kUInt8));
  check_rc(fn(xq.data_ptr(), sx, wq.data_ptr(), sw, bias, out.data_ptr(), code, m, n, k,
              ws_bytes > 0 ? ws.data_ptr() : nullptr, sms, current_stream()),
           what);
  return out;
}

torch::Tensor run_gemm(const torch::Tensor& xq_in, const torch::Tensor& wq_in, const float* sx, const float* sw,
                       const float* bias, torch::ScalarType out_type) {
  auto xq = aligned_packed(xq_in);
  auto wq = aligned_packed(wq_in);
  return launch_gemm(w4a4_entry, fc_w4a4_gemm_workspace_bytes, "W4A4 GEMM", xq, wq, xq.size(1), sx, sw, bias,
                     out_type);
}

// int8 activations [M, K] x int4 weights [N, ceil(K/2)] (w_bits 4) or int8 weights [N, K] (w_bits 8), K padded
// with zero codes to a multiple of 32 (W4A8) or 16 (W8A8).
torch::Tensor run_a8_gemm(const torch::Tensor& xq_in, const torch::Tensor& wq_in, int w_bits, const float* sx,
                          const float* sw, const float* bias, torch::ScalarType out_type) {
  const int64_t k = xq_in.size(1);
  const int64_t align = w_bits == 4 ? 32 : 16;
  const int64_t kp = k == 0 ? align : (k + align - 1) / align * align;
  auto xq = padded_cols(xq_in, kp);
  auto wq = padded_cols(wq_in, w_bits == 4 ? kp / 2 : kp);
  if (w_bits == 4) {
    return launch_gemm(w4a8_entry, fc_w4a8_gemm_workspace_bytes, "W4A8 GEMM", xq, wq, kp, sx, sw, bias, out_type);
  }
  return launch_gemm(w8a8_entry, fc_w8a8_gemm_workspace_bytes, "W8A8 GEMM", xq, wq, kp, sx, sw, bias, out_type);
}

void check_int8(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == torch::kInt8, name, " must be int8, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D");
}

// The a8 operands: x_q int8 [M, K]; the weights packed uint8 [N, ceil(K/2)] (w_bits 4) or int8 [N, K] (8).
void check_a8_operands(const torch::Tensor& xq, const torch::Tensor& wq, int64_t w_bits) {
  TORCH_CHECK(w_bits == 4 || w_bits == 8, "w_bits must be 4 or 8, got ", w_bits);
  check_int8(xq, "x_q");
  if (w_bits == 4) {
    check_packed(wq, "w_packed");
    TORCH_CHECK(wq.size(1) == (xq.size(1) + 1) / 2, "packed weight width ", wq.size(1), " does not match K = ",
                xq.size(1));
  } else {
    check_int8(wq, "w_int8");
    TORCH_CHECK(wq.size(1) == xq.size(1), "widths differ: ", xq.size(1), " vs ", wq.size(1));
  }
  TORCH_CHECK(xq.device() == wq.device(), "operands on different devices");
}

// The fp32 scales and bias of a GEMM on xq's device, checked against M = rows and N = cols.
struct Scales {
  torch::Tensor sx, sw, bias;
  const float* bias_ptr() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
};

Scales gemm_scales(const torch::Tensor& sx, const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias,
                   const torch::Device& dev, int64_t rows, int64_t cols) {
  Scales s;
  s.sx = sx.to(dev, torch::kFloat32).contiguous().reshape(-1);
  s.sw = sw.to(dev, torch::kFloat32).contiguous().reshape(-1);
  TORCH_CHECK(s.sx.numel() == rows && s.sw.numel() == cols, "scale sizes do not match M and N");
  if (bias.has_value()) {
    s.bias = bias->to(dev, torch::kFloat32).contiguous().reshape(-1);
    TORCH_CHECK(s.bias.numel() == cols, "bias size does not match N");
  }
  return s;
}

void check_float_out(torch::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16 || out_dtype == torch::kFloat16,
              "out_dtype must be float32, bfloat16 or float16");
}

torch::Tensor cuda_int4_matmul_int32(const torch::Tensor& xq, const torch::Tensor& wq) {
  check_packed(xq, "x_packed");
  check_packed(wq, "w_packed");
  TORCH_CHECK(xq.device() == wq.device(), "operands on different devices");
  TORCH_CHECK(xq.size(1) == wq.size(1), "packed widths differ: ", xq.size(1), " vs ", wq.size(1));
  const c10::cuda::CUDAGuard guard(xq.device());
  check_device();
  return run_gemm(xq, wq, nullptr, nullptr, nullptr, torch::kInt32);
}

torch::Tensor cuda_w4a4_gemm(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& wq,
                             const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias,
                             torch::ScalarType out_dtype) {
  check_packed(xq, "x_packed");
  check_packed(wq, "w_packed");
  TORCH_CHECK(xq.device() == wq.device(), "operands on different devices");
  TORCH_CHECK(xq.size(1) == wq.size(1), "packed widths differ: ", xq.size(1), " vs ", wq.size(1));
  check_float_out(out_dtype);
  const c10::cuda::CUDAGuard guard(xq.device());
  check_device();
  const Scales s = gemm_scales(sx, sw, bias, xq.device(), xq.size(0), wq.size(0));
  return run_gemm(xq, wq, s.sx.data_ptr<float>(), s.sw.data_ptr<float>(), s.bias_ptr(), out_dtype);
}

torch::Tensor cuda_a8_matmul_int32(const torch::Tensor& xq, const torch::Tensor& wq, int64_t w_bits) {
  check_a8_operands(xq, wq, w_bits);
  const c10::cuda::CUDAGuard guard(xq.device());
  check_device();
  return run_a8_gemm(xq, wq, static_cast<int>(w_bits), nullptr, nullptr, nullptr, torch::kInt32);
}

torch::Tensor cuda_a8_gemm(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& wq,
                           const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias,
                           torch::ScalarType out_dtype, int64_t w_bits) {
  check_a8_operands(xq, wq, w_bits);
  check_float_out(out_dtype);
  const c10::cuda::CUDAGuard guard(xq.device());
  check_device();
  const Scales s = gemm_scales(sx, sw, bias, xq.device(), xq.size(0), wq.size(0));
  return run_a8_gemm(xq, wq, static_cast<int>(w_bits), s.sx.data_ptr<float>(), s.sw.data_ptr<float>(),
                     s.bias_ptr(), out_dtype);
}

// Online transform + per-token quantization (bits 4: packed int4; bits 8: int8 codes).
std::tuple<torch::Tensor, torch::Tensor> quantize_act(const torch::Tensor& x_in,
                                                      const c10::optional<torch::Tensor>& left,
                                                      const c10::optional<torch::Tensor>& right,
                                                      const c10::optional<torch::Tensor>& diag,
                                                      const c10::optional<torch::Tensor>& clip, int bits) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "x must be a 2-D CUDA tensor");
  TORCH_CHECK(left.has_value() == right.has_value(), "left and right transforms come together");
  const c10::cuda::CUDAGuard guard(x_in.device());
  check_device();
  const auto dev = x_in.device();
  auto x = x_in.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(k > 0, "x must have at least one column");
  torch::Tensor diag32, left32, right32, clip32;
  if (diag.has_value()) {
    diag32 = diag->to(dev, torch::kFloat32).contiguous().reshape(-1);
    TORCH_CHECK(diag32.numel() == k, "diag size does not match K");
  }
  if (clip.has_value()) {
    clip32 = clip->to(dev, torch::kFloat32).contiguous().reshape(-1);
    TORCH_CHECK(clip32.numel() == 1, "clip must hold one value");
  }
  int64_t a = 0, b = 0;
  if (left.has_value()) {
    left32 = left->to(dev, torch::kFloat32).contiguous();
    right32 = right->to(dev, torch::kFloat32).contiguous();
    a = left32.size(0);
    b = right32.size(0);
    TORCH_CHECK(left32.dim() == 2 && left32.size(1) == a && right32.dim() == 2 && right32.size(1) == b,
                "left and right must be square");
    TORCH_CHECK(a * b == k, "Kronecker factors ", a, " x ", b, " do not match K = ", k);
    const int smem = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
    if (!fc_quantize_act_fused_supported(a, b, smem)) {
      // Too large for the one-kernel path: the reference's transform in torch, then the fused quantizer.
      auto xf = x.to(torch::kFloat32);
      if (diag.has_value()) xf = xf * diag32;
      x = left32.t().matmul(xf.reshape({-1, a, b})).matmul(right32).reshape({m, k}).contiguous();
      diag32 = torch::Tensor();
      left32 = right32 = torch::Tensor();
      a = b = 0;
    }
  }
  int in_code;
  switch (x.scalar_type()) {
    case torch::kFloat32: in_code = FC_IN_F32; break;
    case torch::kBFloat16: in_code = FC_IN_BF16; break;
    case torch::kFloat16: in_code = FC_IN_F16; break;
    default: TORCH_CHECK(false, "x must be float32, bfloat16 or float16, got ", x.scalar_type());
  }
  auto scale = torch::empty({m}, x.options().dtype(torch::kFloat32));
  const float* d = diag32.defined() ? diag32.data_ptr<float>() : nullptr;
  const float* l = left32.defined() ? left32.data_ptr<float>() : nullptr;
  const float* r = right32.defined() ? right32.data_ptr<float>() : nullptr;
  const float* c = clip32.defined() ? clip32.data_ptr<float>() : nullptr;
  if (bits == 8) {
    auto codes = torch::empty({m, k}, x.options().dtype(torch::kInt8));
    check_rc(fc_quantize_act_int8(x.data_ptr(), in_code, m, k, d, l, a, r, b, c, codes.data_ptr<int8_t>(),
                                  scale.data_ptr<float>(), current_stream()),
             "int8 activation quantization");
    return {codes, scale};
  }
  auto packed = torch::empty({m, (k + 1) / 2}, x.options().dtype(torch::kUInt8));
  check_rc(fc_quantize_act(x.data_ptr(), in_code, m, k, d, l, a, r, b, c, packed.data_ptr<uint8_t>(),
                           scale.data_ptr<float>(), current_stream()),
           "activation quantization");
  return {packed, scale};
}

std::tuple<torch::Tensor, torch::Tensor> cuda_quantize_act(const torch::Tensor& x,
                                                           const c10::optional<torch::Tensor>& left,
                                                           const c10::optional<torch::Tensor>& right,
                                                           const c10::optional<torch::Tensor>& diag,
                                                           const c10::optional<torch::Tensor>& clip) {
  return quantize_act(x, left, right, diag, clip, 4);
}

std::tuple<torch::Tensor, torch::Tensor> cuda_quantize_act_int8(const torch::Tensor& x,
                                                                const c10::optional<torch::Tensor>& left,
                                                                const c10::optional<torch::Tensor>& right,
                                                                const c10::optional<torch::Tensor>& diag,
                                                                const c10::optional<torch::Tensor>& clip) {
  return quantize_act(x, left, right, diag, clip, 8);
}

}  // namespace

void register_cuda_bindings(pybind11::module& m) {
  m.def("cuda_int4_matmul_int32", &cuda_int4_matmul_int32, "CUDA: exact int32 accumulators of packed int4 GEMM");
  m.def("cuda_w4a4_gemm", &cuda_w4a4_gemm, "CUDA: W4A4 GEMM with the fp32 epilogue (acc*sx)*sw (+bias)");
  m.def("cuda_quantize_act", &cuda_quantize_act,
        "CUDA: fused online transform + per-token symmetric int4 quantization + packing");
  m.def("cuda_a8_matmul_int32", &cuda_a8_matmul_int32,
        "CUDA: exact int32 accumulators of int8 activations x int4 (w_bits 4) or int8 (w_bits 8) weights");
  m.def("cuda_a8_gemm", &cuda_a8_gemm,
        "CUDA: W4A8 (w_bits 4) / W8A8 (w_bits 8) GEMM with the fp32 epilogue (acc*sx)*sw (+bias)");
  m.def("cuda_quantize_act_int8", &cuda_quantize_act_int8,
        "CUDA: fused online transform + per-token symmetric int8 quantization");
}
