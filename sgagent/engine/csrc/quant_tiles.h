// The packed GGUF tiles that quant_linear.cpp (bf16) and quant_linear_fp32.cpp (float32) both read: their ggml
// types, shape and size, and the fp16 scales they start with. Layout: quant_linear.cpp's header comment.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace sgagent::tiles {

constexpr int64_t kQ4_1 = 3, kQ8_0 = 8;  // ggml's type numbers
constexpr int64_t kTileN = 16, kTileK = 32;

inline int64_t tile_bytes(int64_t qtype) { return qtype == kQ4_1 ? 320 : 544; }

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

}  // namespace sgagent::tiles
