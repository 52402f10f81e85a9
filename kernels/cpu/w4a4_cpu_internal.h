// Internal declarations shared by the CPU kernel translation units (not part of the public entry points).
#pragma once
#include <cstdint>

namespace fair_calib {

// AVX-512 VNNI GEMM (w4a4_avx512.cpp). Call only when cpu_has_avx512vnni() is true.
void gemm_avx512vnni(const uint8_t* xq, const uint8_t* wq, int32_t* acc, int64_t m, int64_t n, int64_t kb,
                     int threads);

}  // namespace fair_calib
