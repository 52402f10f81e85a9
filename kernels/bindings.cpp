// Python bindings of the compiled CPU kernels (W4A4, W4A8 and the int8 activation quantizer) and, in a CUDA
// build, of the CUDA W4A4 kernels. The two binding files (this one and cuda_bindings.cpp) are
// the only translation units that include torch headers; the kernels take raw pointers. The ops themselves
// are registered from Python (fair_calib_hf/ops/cpu.py, ops/cuda.py) on top of the reference ops.
#include <torch/extension.h>

#include <string>
#include <vector>

#include <ATen/Parallel.h>

#include "cpu/w4a4_cpu.h"

namespace {

void check_packed(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kUInt8, name, " must be uint8, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous 2-D tensor");
}

// The fp32 epilogue's operands: x scale [m], w scale [n], bias [n] (optional), all as contiguous fp32.
struct Epilogue {
  torch::Tensor sx, sw, bias;
  Epilogue(const torch::Tensor& sx_, const torch::Tensor& sw_, const c10::optional<torch::Tensor>& bias_, int64_t m,
           int64_t n)
      : sx(sx_.to(torch::kFloat32).contiguous()), sw(sw_.to(torch::kFloat32).contiguous()) {
    TORCH_CHECK(sx.numel() == m && sw.numel() == n, "scale sizes do not match M and N");
    if (bias_.has_value()) {
      bias = bias_->to(torch::kFloat32).contiguous();
      TORCH_CHECK(bias.numel() == n, "bias size does not match N");
    }
  }
  const float* bias_ptr() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
};

// The activation rows [m, k] to quantize, as contiguous fp32, and the fused online transform's operands when
// there is one: left [a, a], right [b, b] with a·b == k, diag [k] (optional), all as contiguous fp32.
struct QuantInput {
  torch::Tensor x, left, right, diag;
  int64_t m, k, a = 0, b = 0;
  explicit QuantInput(const torch::Tensor& x_) {
    TORCH_CHECK(x_.device().is_cpu() && x_.dim() == 2, "x must be a 2-D CPU tensor");
    x = x_.to(torch::kFloat32).contiguous();
    m = x.size(0);
    k = x.size(1);
  }
  QuantInput(const torch::Tensor& x_, const torch::Tensor& left_, const torch::Tensor& right_,
             const c10::optional<torch::Tensor>& diag_)
      : QuantInput(x_) {
    left = left_.to(torch::kFloat32).contiguous();
    right = right_.to(torch::kFloat32).contiguous();
    a = left.size(0);
    b = right.size(0);
    TORCH_CHECK(left.dim() == 2 && left.size(1) == a && right.dim() == 2 && right.size(1) == b,
                "left and right must be square matrices");
    TORCH_CHECK(a * b == k, "Kronecker factors ", a, "x", b, " do not multiply to the input width ", k);
    if (diag_.has_value()) {
      diag = diag_->to(torch::kFloat32).contiguous();
      TORCH_CHECK(diag.numel() == k, "diag has ", diag.numel(), " entries, expected ", k);
    }
  }
  const float* diag_ptr() const { return diag.defined() ? diag.data_ptr<float>() : nullptr; }
};

torch::Tensor int4_matmul_int32(const torch::Tensor& xq, const torch::Tensor& wq) {
  check_packed(xq, "x_packed");
  check_packed(wq, "w_packed");
  TORCH_CHECK(xq.size(1) == wq.size(1), "packed widths differ: ", xq.size(1), " vs ", wq.size(1));
  auto acc = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kInt32));
  fair_calib::int4_gemm_acc(xq.data_ptr<uint8_t>(), wq.data_ptr<uint8_t>(), acc.data_ptr<int32_t>(), xq.size(0),
                            wq.size(0), xq.size(1), at::get_num_threads());
  return acc;
}

torch::Tensor w4a4_gemm_f32(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& wq,
                            const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias) {
  check_packed(xq, "x_packed");
  check_packed(wq, "w_packed");
  TORCH_CHECK(xq.size(1) == wq.size(1), "packed widths differ: ", xq.size(1), " vs ", wq.size(1));
  const Epilogue ep(sx, sw, bias, xq.size(0), wq.size(0));
  auto y = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kFloat32));
  fair_calib::w4a4_gemm_f32(xq.data_ptr<uint8_t>(), ep.sx.data_ptr<float>(), wq.data_ptr<uint8_t>(),
                            ep.sw.data_ptr<float>(), ep.bias_ptr(), y.data_ptr<float>(), xq.size(0), wq.size(0),
                            xq.size(1), at::get_num_threads());
  return y;
}

std::tuple<torch::Tensor, torch::Tensor> quantize_pack(const torch::Tensor& x, double clip) {
  const QuantInput in(x);
  auto packed = torch::empty({in.m, (in.k + 1) / 2}, torch::dtype(torch::kUInt8));
  auto scale = torch::empty({in.m}, torch::dtype(torch::kFloat32));
  fair_calib::quantize_pack_rows(in.x.data_ptr<float>(), static_cast<float>(clip), packed.data_ptr<uint8_t>(),
                                 scale.data_ptr<float>(), in.m, in.k, at::get_num_threads());
  return {packed, scale};
}

std::tuple<torch::Tensor, torch::Tensor> transform_quantize_pack(const torch::Tensor& x, const torch::Tensor& left,
                                                                const torch::Tensor& right,
                                                                const c10::optional<torch::Tensor>& diag,
                                                                double clip) {
  const QuantInput in(x, left, right, diag);
  auto packed = torch::empty({in.m, (in.k + 1) / 2}, torch::dtype(torch::kUInt8));
  auto scale = torch::empty({in.m}, torch::dtype(torch::kFloat32));
  fair_calib::transform_quantize_rows(in.x.data_ptr<float>(), in.m, in.a, in.b, in.left.data_ptr<float>(),
                                      in.right.data_ptr<float>(), in.diag_ptr(), static_cast<float>(clip),
                                      packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), at::get_num_threads());
  return {packed, scale};
}

void check_prepared(const torch::Tensor& prepared, int64_t n, int64_t kb) {
  TORCH_CHECK(prepared.device().is_cpu() && prepared.scalar_type() == torch::kUInt8 && prepared.dim() == 1 &&
                  prepared.is_contiguous(),
              "prepared weights must be a contiguous 1-D uint8 CPU tensor");
  TORCH_CHECK(n >= 0 && prepared.numel() == fair_calib::prepared_weight_bytes(n, kb), "prepared weights have ",
              prepared.numel(), " bytes, expected ", fair_calib::prepared_weight_bytes(n, kb), " for ", n, " rows of ",
              kb, " packed bytes");
}

torch::Tensor prepare_weight(const torch::Tensor& wq) {
  check_packed(wq, "w_packed");
  const int64_t n = wq.size(0), kb = wq.size(1);
  auto out = torch::empty({fair_calib::prepared_weight_bytes(n, kb)}, torch::dtype(torch::kUInt8));
  const int rc = fair_calib::prepare_weight(wq.data_ptr<uint8_t>(), n, kb, out.data_ptr<uint8_t>(),
                                            at::get_num_threads());
  TORCH_CHECK_VALUE(rc == 0, "this CPU has no AVX-512 VNNI: the prepared weight layout is not available");
  return out;
}

torch::Tensor unprepare_weight(const torch::Tensor& prepared, int64_t n, int64_t kb) {
  check_prepared(prepared, n, kb);
  auto wq = torch::empty({n, kb}, torch::dtype(torch::kUInt8));
  fair_calib::unprepare_weight(prepared.data_ptr<uint8_t>(), n, kb, wq.data_ptr<uint8_t>());
  return wq;
}

torch::Tensor int4_matmul_int32_prepared(const torch::Tensor& xq, const torch::Tensor& prepared, int64_t n) {
  check_packed(xq, "x_packed");
  check_prepared(prepared, n, xq.size(1));
  auto acc = torch::empty({xq.size(0), n}, torch::dtype(torch::kInt32));
  fair_calib::int4_gemm_acc_prepared(xq.data_ptr<uint8_t>(), prepared.data_ptr<uint8_t>(), acc.data_ptr<int32_t>(),
                                     xq.size(0), n, xq.size(1), at::get_num_threads());
  return acc;
}

torch::Tensor w4a4_gemm_prepared_f32(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& prepared,
                                     const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias, int64_t n) {
  check_packed(xq, "x_packed");
  check_prepared(prepared, n, xq.size(1));
  const Epilogue ep(sx, sw, bias, xq.size(0), n);
  auto y = torch::empty({xq.size(0), n}, torch::dtype(torch::kFloat32));
  fair_calib::w4a4_gemm_prepared_f32(xq.data_ptr<uint8_t>(), ep.sx.data_ptr<float>(), prepared.data_ptr<uint8_t>(),
                                     ep.sw.data_ptr<float>(), ep.bias_ptr(), y.data_ptr<float>(), xq.size(0), n,
                                     xq.size(1), at::get_num_threads());
  return y;
}

void check_int8(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kInt8, name, " must be int8, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous 2-D tensor");
}

torch::Tensor int8x4_matmul_int32(const torch::Tensor& xq, const torch::Tensor& wq) {
  check_int8(xq, "x_q");
  check_packed(wq, "w_packed");
  TORCH_CHECK(wq.size(1) == (xq.size(1) + 1) / 2, "packed weight width ", wq.size(1), " does not hold K=", xq.size(1));
  auto acc = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kInt32));
  fair_calib::int8x4_gemm_acc(xq.data_ptr<int8_t>(), wq.data_ptr<uint8_t>(), acc.data_ptr<int32_t>(), xq.size(0),
                              wq.size(0), xq.size(1), at::get_num_threads());
  return acc;
}

torch::Tensor w4a8_gemm_f32(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& wq,
                            const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias) {
  check_int8(xq, "x_q");
  check_packed(wq, "w_packed");
  TORCH_CHECK(wq.size(1) == (xq.size(1) + 1) / 2, "packed weight width ", wq.size(1), " does not hold K=", xq.size(1));
  const Epilogue ep(sx, sw, bias, xq.size(0), wq.size(0));
  auto y = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kFloat32));
  fair_calib::w4a8_gemm_f32(xq.data_ptr<int8_t>(), ep.sx.data_ptr<float>(), wq.data_ptr<uint8_t>(),
                            ep.sw.data_ptr<float>(), ep.bias_ptr(), y.data_ptr<float>(), xq.size(0), wq.size(0),
                            xq.size(1), at::get_num_threads());
  return y;
}

torch::Tensor int8x4_matmul_int32_prepared(const torch::Tensor& xq, const torch::Tensor& prepared, int64_t n) {
  check_int8(xq, "x_q");
  check_prepared(prepared, n, (xq.size(1) + 1) / 2);
  auto acc = torch::empty({xq.size(0), n}, torch::dtype(torch::kInt32));
  fair_calib::int8x4_gemm_acc_prepared(xq.data_ptr<int8_t>(), prepared.data_ptr<uint8_t>(), acc.data_ptr<int32_t>(),
                                       xq.size(0), n, xq.size(1), at::get_num_threads());
  return acc;
}

torch::Tensor w4a8_gemm_prepared_f32(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& prepared,
                                     const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias, int64_t n) {
  check_int8(xq, "x_q");
  check_prepared(prepared, n, (xq.size(1) + 1) / 2);
  const Epilogue ep(sx, sw, bias, xq.size(0), n);
  auto y = torch::empty({xq.size(0), n}, torch::dtype(torch::kFloat32));
  fair_calib::w4a8_gemm_prepared_f32(xq.data_ptr<int8_t>(), ep.sx.data_ptr<float>(), prepared.data_ptr<uint8_t>(),
                                     ep.sw.data_ptr<float>(), ep.bias_ptr(), y.data_ptr<float>(), xq.size(0), n,
                                     xq.size(1), at::get_num_threads());
  return y;
}

void check_w8a8(const torch::Tensor& xq, const torch::Tensor& wq) {
  check_int8(xq, "x_q");
  check_int8(wq, "w_int8");
  TORCH_CHECK(xq.size(1) == wq.size(1), "widths differ: ", xq.size(1), " vs ", wq.size(1));
  TORCH_CHECK(xq.size(1) < (int64_t{1} << 17), "K=", xq.size(1), " >= 2^17 could overflow the int32 accumulator");
}

// W8A8 for few tokens (AVX-512 VNNI only; ValueError under another instruction set).
torch::Tensor w8a8_matmul_int32(const torch::Tensor& xq, const torch::Tensor& wq) {
  check_w8a8(xq, wq);
  auto acc = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kInt32));
  const int rc = fair_calib::w8a8_gemm_acc(xq.data_ptr<int8_t>(), wq.data_ptr<int8_t>(), acc.data_ptr<int32_t>(),
                                           xq.size(0), wq.size(0), xq.size(1), at::get_num_threads());
  TORCH_CHECK_VALUE(rc == 0, "the W8A8 kernel needs the avx512vnni instruction set");
  return acc;
}

torch::Tensor w8a8_gemm_f32(const torch::Tensor& xq, const torch::Tensor& sx, const torch::Tensor& wq,
                            const torch::Tensor& sw, const c10::optional<torch::Tensor>& bias) {
  check_w8a8(xq, wq);
  const Epilogue ep(sx, sw, bias, xq.size(0), wq.size(0));
  auto y = torch::empty({xq.size(0), wq.size(0)}, torch::dtype(torch::kFloat32));
  const int rc = fair_calib::w8a8_gemm_f32(xq.data_ptr<int8_t>(), ep.sx.data_ptr<float>(), wq.data_ptr<int8_t>(),
                                           ep.sw.data_ptr<float>(), ep.bias_ptr(), y.data_ptr<float>(), xq.size(0),
                                           wq.size(0), xq.size(1), at::get_num_threads());
  TORCH_CHECK_VALUE(rc == 0, "the W8A8 kernel needs the avx512vnni instruction set");
  return y;
}

// The fp32 epilogue on int32 accumulators [m, n], in place: returns acc's memory reinterpreted as fp32 (acc
// itself is consumed).
torch::Tensor int32_epilogue_(torch::Tensor acc, const torch::Tensor& sx, const torch::Tensor& sw,
                              const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(acc.device().is_cpu() && acc.scalar_type() == torch::kInt32 && acc.dim() == 2 && acc.is_contiguous(),
              "acc must be a contiguous 2-D int32 CPU tensor");
  const Epilogue ep(sx, sw, bias, acc.size(0), acc.size(1));
  auto y = acc.view(torch::kFloat32);
  fair_calib::int32_epilogue_f32(acc.data_ptr<int32_t>(), ep.sx.data_ptr<float>(), ep.sw.data_ptr<float>(),
                                 ep.bias_ptr(), y.data_ptr<float>(), acc.size(0), acc.size(1), at::get_num_threads());
  return y;
}

// Stage II's fused fake quantizer (cpu/fake_quant.cpp). x and g: contiguous fp32 CPU [m, k]; clip: contiguous fp32
// CPU with one value (every row) or m values (one per row).
void check_fake_quant_rows(const torch::Tensor& x, const torch::Tensor& clip) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous 2-D fp32 CPU tensor");
  TORCH_CHECK(clip.device().is_cpu() && clip.scalar_type() == torch::kFloat32 && clip.is_contiguous() &&
                  (clip.numel() == 1 || clip.numel() == x.size(0)),
              "clip must be a contiguous fp32 CPU tensor with 1 or ", x.size(0), " values, got ", clip.numel());
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> fake_quant_rows_forward(const torch::Tensor& x,
                                                                                const torch::Tensor& clip,
                                                                                int64_t qmin, int64_t qmax) {
  check_fake_quant_rows(x, clip);
  const int64_t m = x.size(0), k = x.size(1);
  auto out = torch::empty_like(x);
  auto scale = torch::empty({m}, x.options());
  auto amax = torch::empty({m}, x.options());
  fair_calib::fake_quant_rows_forward(x.data_ptr<float>(), clip.data_ptr<float>(), clip.numel() == 1 ? 0 : 1,
                                      out.data_ptr<float>(), scale.data_ptr<float>(), amax.data_ptr<float>(), m, k,
                                      static_cast<int>(qmin), static_cast<int>(qmax), at::get_num_threads());
  return {out, scale, amax};
}

std::tuple<torch::Tensor, torch::Tensor> fake_quant_rows_backward(const torch::Tensor& g, const torch::Tensor& x,
                                                                  const torch::Tensor& clip,
                                                                  const torch::Tensor& scale,
                                                                  const torch::Tensor& amax, int64_t qmin,
                                                                  int64_t qmax, bool grad_x, bool grad_clip) {
  check_fake_quant_rows(x, clip);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == torch::kFloat32 && g.is_contiguous() && g.device().is_cpu(),
              "g must be a contiguous fp32 CPU tensor shaped like x");
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(scale.numel() == m && amax.numel() == m && scale.is_contiguous() && amax.is_contiguous() &&
                  scale.scalar_type() == torch::kFloat32 && amax.scalar_type() == torch::kFloat32,
              "scale and amax must be the forward's contiguous fp32 [m] tensors");
  torch::Tensor gx = grad_x ? torch::empty_like(x) : torch::Tensor();
  torch::Tensor gc = grad_clip ? torch::empty({m}, x.options()) : torch::Tensor();
  fair_calib::fake_quant_rows_backward(g.data_ptr<float>(), x.data_ptr<float>(), clip.data_ptr<float>(),
                                       clip.numel() == 1 ? 0 : 1, scale.data_ptr<float>(), amax.data_ptr<float>(),
                                       grad_x ? gx.data_ptr<float>() : nullptr,
                                       grad_clip ? gc.data_ptr<float>() : nullptr, m, k, static_cast<int>(qmin),
                                       static_cast<int>(qmax), at::get_num_threads());
  return {gx, gc};
}

std::tuple<torch::Tensor, torch::Tensor> quantize_int8(const torch::Tensor& x, double clip) {
  const QuantInput in(x);
  auto codes = torch::empty({in.m, in.k}, torch::dtype(torch::kInt8));
  auto scale = torch::empty({in.m}, torch::dtype(torch::kFloat32));
  fair_calib::quantize_int8_rows(in.x.data_ptr<float>(), static_cast<float>(clip), codes.data_ptr<int8_t>(),
                                 scale.data_ptr<float>(), in.m, in.k, at::get_num_threads());
  return {codes, scale};
}

std::tuple<torch::Tensor, torch::Tensor> transform_quantize_int8(const torch::Tensor& x, const torch::Tensor& left,
                                                                const torch::Tensor& right,
                                                                const c10::optional<torch::Tensor>& diag,
                                                                double clip) {
  const QuantInput in(x, left, right, diag);
  auto codes = torch::empty({in.m, in.k}, torch::dtype(torch::kInt8));
  auto scale = torch::empty({in.m}, torch::dtype(torch::kFloat32));
  fair_calib::transform_quantize_rows_int8(in.x.data_ptr<float>(), in.m, in.a, in.b, in.left.data_ptr<float>(),
                                           in.right.data_ptr<float>(), in.diag_ptr(), static_cast<float>(clip),
                                           codes.data_ptr<int8_t>(), scale.data_ptr<float>(), at::get_num_threads());
  return {codes, scale};
}

std::vector<std::string> supported_isas() {
  const char* names[8];
  const int count = std::min(fair_calib::supported_gemm_isas(names, 8), 8);
  return std::vector<std::string>(names, names + count);
}

void set_isa(const std::string& name) {
  const int rc = fair_calib::set_gemm_isa(name.c_str());
  TORCH_CHECK_VALUE(rc != -1, "unknown CPU ISA '", name, "' (expected auto, scalar, avx2 or avx512vnni)");
  TORCH_CHECK_VALUE(rc != -2, "this CPU cannot run the '", name, "' kernels");
}

}  // namespace

#ifdef FAIR_CALIB_WITH_CUDA
void register_cuda_bindings(pybind11::module& m);  // cuda_bindings.cpp
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fair_calib_hf compiled W4A4 kernels (CPU, and CUDA when built with it)";
  m.def("int4_matmul_int32", &int4_matmul_int32, "exact int32 accumulators of packed int4 x packed int4");
  m.def("w4a4_gemm_f32", &w4a4_gemm_f32, "W4A4 GEMM with the fp32 epilogue (acc*sx)*sw (+bias)");
  m.def("quantize_pack", &quantize_pack, "per-row symmetric int4 quantization and packing");
  m.def("transform_quantize_pack", &transform_quantize_pack,
        "fused online Kronecker transform (x*diag)(left kron right) + per-row int4 quantization and packing");
  m.def("prepare_weight", &prepare_weight,
        "packed int4 weights [N, K/2] -> the VNNI GEMM's prepared layout (1-D uint8, a byte permutation + padding)");
  m.def("unprepare_weight", &unprepare_weight, "prepared layout -> the packed int4 weights [N, K/2], exactly");
  m.def("int4_matmul_int32_prepared", &int4_matmul_int32_prepared, "exact int32 accumulators, prepared weights");
  m.def("w4a4_gemm_prepared_f32", &w4a4_gemm_prepared_f32, "W4A4 GEMM with the fp32 epilogue, prepared weights");
  m.def("int8x4_matmul_int32", &int8x4_matmul_int32, "exact int32 accumulators of int8 x packed int4 (W4A8)");
  m.def("w4a8_gemm_f32", &w4a8_gemm_f32, "W4A8 GEMM with the fp32 epilogue (acc*sx)*sw (+bias)");
  m.def("int8x4_matmul_int32_prepared", &int8x4_matmul_int32_prepared,
        "exact int32 accumulators of int8 x int4, prepared weights");
  m.def("w4a8_gemm_prepared_f32", &w4a8_gemm_prepared_f32, "W4A8 GEMM with the fp32 epilogue, prepared weights");
  m.def("w8a8_matmul_int32", &w8a8_matmul_int32, "exact int32 accumulators of int8 x int8, few tokens (VNNI)");
  m.def("w8a8_gemm_f32", &w8a8_gemm_f32, "W8A8 GEMM with the fp32 epilogue, few tokens (VNNI)");
  m.def("int32_epilogue_", &int32_epilogue_,
        "fp32 epilogue (acc*sx)*sw (+bias) on int32 accumulators, in place (returns acc's memory as fp32)");
  m.def("quantize_int8", &quantize_int8, "per-row symmetric int8 quantization");
  m.def("transform_quantize_int8", &transform_quantize_int8,
        "fused online Kronecker transform (x*diag)(left kron right) + per-row int8 quantization");
  m.def("fake_quant_rows_forward", &fake_quant_rows_forward,
        "Stage II fake quantizer forward: (out, scale [m], amax [m]) of fp32 rows [m, k]");
  m.def("fake_quant_rows_backward", &fake_quant_rows_backward,
        "Stage II fake quantizer backward: (grad_x or undefined, per-row clip gradient or undefined)");
  m.def("gemm_isa", &fair_calib::gemm_isa, "instruction set used by the CPU GEMM now");
  m.def("supported_isas", &supported_isas, "CPU GEMM instruction sets this CPU can run, best last");
  m.def("set_isa", &set_isa, "force the CPU GEMM instruction set by name, or 'auto'");
#ifdef FAIR_CALIB_WITH_CUDA
  m.attr("with_cuda") = true;
  register_cuda_bindings(m);
#else
  m.attr("with_cuda") = false;
#endif
}
