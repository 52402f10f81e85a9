// Python bindings of the CUDA W4A4 kernels (compiled only into a CUDA build of the extension, with
// FAIR_CALIB_WITH_CUDA defined). This file and bindings.cpp are the only ones that include torch headers;
// the kernels behind kernels/cuda/w4a4_cuda.h take raw device pointers and a stream.
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
torch::Tensor aligned_packed(const torch::Tensor& t) {
  auto c = t.contiguous();
  const int64_t kb = c.size(1);
  const int64_t kb16 = kb == 0 ? 16 : (kb + 15) / 16 * 16;
  if (kb16 == kb && reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0) return c;
  auto padded = torch::zeros({c.size(0), kb16}, c.options());
  if (kb > 0) padded.narrow(1, 0, kb).copy_(c);
  return padded;
}

torch::Tensor run_gemm(const torch::Tensor& xq_in, const torch::Tensor& wq_in, const float* sx, const float* sw,
                       const float* bias, torch::ScalarType out_type) {
  auto xq = aligned_packed(xq_in);
  auto wq = aligned_packed(wq_in);
  const int64_t m = xq.size(0), n = wq.size(0), kb = xq.size(1);
  int code;
  switch (out_type) {
    case torch::kFloat32: code = FC_OUT_F32; break;
    case torch::kBFloat16: code = FC_OUT_BF16; break;
    case torch::kFloat16: code = FC_OUT_F16; break;
    case torch::kInt32: code = FC_OUT_I32; break;
    default: TORCH_CHECK(false, "unsupported output dtype ", out_type);
  }
  auto out = torch::empty({m, n}, xq.options().dtype(out_type));
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const size_t ws_bytes = fc_w4a4_gemm_workspace_bytes(m, n, kb, sms, code);
  torch::Tensor ws;
  if (ws_bytes > 0) ws = torch::empty({static_cast<int64_t>(ws_bytes)}, xq.options());
  check_rc(fc_w4a4_gemm(xq.data_ptr<uint8_t>(), sx, wq.data_ptr<uint8_t>(), sw, bias, out.data_ptr(), code, m, n,
                        kb, ws_bytes > 0 ? ws.data_ptr() : nullptr, sms, current_stream()),
           "W4A4 GEMM");
  return out;
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
  TORCH_CHECK(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16 || out_dtype == torch::kFloat16,
              "out_dtype must be float32, bfloat16 or float16");
  const c10::cuda::CUDAGuard guard(xq.device());
  check_device();
  auto sx32 = sx.to(xq.device(), torch::kFloat32).contiguous().reshape(-1);
  auto sw32 = sw.to(xq.device(), torch::kFloat32).contiguous().reshape(-1);
  TORCH_CHECK(sx32.numel() == xq.size(0) && sw32.numel() == wq.size(0), "scale sizes do not match M and N");
  torch::Tensor b32;
  if (bias.has_value()) {
    b32 = bias->to(xq.device(), torch::kFloat32).contiguous().reshape(-1);
    TORCH_CHECK(b32.numel() == wq.size(0), "bias size does not match N");
  }
  return run_gemm(xq, wq, sx32.data_ptr<float>(), sw32.data_ptr<float>(),
                  bias.has_value() ? b32.data_ptr<float>() : nullptr, out_dtype);
}

std::tuple<torch::Tensor, torch::Tensor> cuda_quantize_act(const torch::Tensor& x_in,
                                                           const c10::optional<torch::Tensor>& left,
                                                           const c10::optional<torch::Tensor>& right,
                                                           const c10::optional<torch::Tensor>& diag,
                                                           const c10::optional<torch::Tensor>& clip) {
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
  auto packed = torch::empty({m, (k + 1) / 2}, x.options().dtype(torch::kUInt8));
  auto scale = torch::empty({m}, x.options().dtype(torch::kFloat32));
  check_rc(fc_quantize_act(x.data_ptr(), in_code, m, k, diag32.defined() ? diag32.data_ptr<float>() : nullptr,
                           left32.defined() ? left32.data_ptr<float>() : nullptr, a,
                           right32.defined() ? right32.data_ptr<float>() : nullptr, b,
                           clip32.defined() ? clip32.data_ptr<float>() : nullptr, packed.data_ptr<uint8_t>(),
                           scale.data_ptr<float>(), current_stream()),
           "activation quantization");
  return {packed, scale};
}

}  // namespace

void register_cuda_bindings(pybind11::module& m) {
  m.def("cuda_int4_matmul_int32", &cuda_int4_matmul_int32, "CUDA: exact int32 accumulators of packed int4 GEMM");
  m.def("cuda_w4a4_gemm", &cuda_w4a4_gemm, "CUDA: W4A4 GEMM with the fp32 epilogue (acc*sx)*sw (+bias)");
  m.def("cuda_quantize_act", &cuda_quantize_act,
        "CUDA: fused online transform + per-token symmetric int4 quantization + packing");
}
