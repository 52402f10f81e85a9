// Shared definitions of the packed W4A4 format and the int8 activations of W4A8 / W8A8 (no torch, no CUDA
// runtime).
//
// Packing: byte j of a row holds int4 code 2j in its low nibble and 2j+1 in its high nibble, both in
// two's complement. Quantization: s = (absmax * clip) / 7 in fp32 (1 if that is 0), q = clamp(rint(x / s),
// -8, 7) with true fp32 division and round-half-to-even. int8 activations: the same with 127 in place of 7
// and the range [-128, 127] (codes stored unpacked, one signed byte each). These rules must match
// fair_calib_hf/packing.py bit for bit.
#pragma once
#include <cmath>
#include <cstdint>

namespace fair_calib {

constexpr int kQMin = -8;
constexpr int kQMax = 7;
constexpr int kQMin8 = -128;
constexpr int kQMax8 = 127;

inline int low_code(uint8_t b) { return static_cast<int>(static_cast<int8_t>(static_cast<uint8_t>(b << 4)) >> 4); }
inline int high_code(uint8_t b) { return static_cast<int>(static_cast<int8_t>(b) >> 4); }

inline float symmetric_scale(float absmax, float clip, int qmax = kQMax) {
  const float s = (absmax * clip) / static_cast<float>(qmax);
  return s == 0.0f ? 1.0f : s;
}

inline int quantize_code(float x, float scale, int qmin = kQMin, int qmax = kQMax) {
  float q = std::nearbyint(x / scale);  // default rounding mode: half to even
  q = q < qmin ? qmin : (q > qmax ? qmax : q);
  return static_cast<int>(q);
}

}  // namespace fair_calib
