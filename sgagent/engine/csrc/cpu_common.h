// Helpers shared by the CPU ops: float32 <-> element conversions written so loops of them vectorise, and
// reading a block of rows of a strided matrix into a float32 tile.
//
// Why the tile: on a CPU decode step a projection's output comes back transposed (W @ x^T is the faster
// matmul for a few rows, see model/llama.py:project), and torch's element-wise kernels walk such views element
// by element. Each op here reads its input through load_rows, which follows whichever stride is 1, so a
// transposed input costs about what a contiguous one does; outputs are written contiguous.

#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

// On element-wise loops, 512-bit vectors where the CPU has them: GCC defaults to 256 bits on AVX-512 parts
// (clock-speed caution), which halves these loops' throughput (silu_mul: 0.41 vs 0.2x ms at 512 rows). Not
// used on the attention, which measured slower with them.
#if defined(__GNUC__) && !defined(__clang__)
#define SGAGENT_WIDE_VECTORS __attribute__((target("prefer-vector-width=512")))
#else
#define SGAGENT_WIDE_VECTORS
#endif

namespace sgagent {

template <typename T>
inline float widen(T x) {
  return static_cast<float>(x);
}

template <>
inline float widen(c10::BFloat16 x) {  // the bit shift, written so loops of it vectorise
  return std::bit_cast<float>(static_cast<uint32_t>(x.x) << 16);
}

// float32 -> T with round-to-nearest-even, the rounding torch's own kernels use (c10's for bf16, NaN -> 0x7fc0)
template <typename T>
inline T narrow(float f) {
  return static_cast<T>(f);
}

template <>
inline c10::BFloat16 narrow(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t bits = f != f ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}

// x rounded to T and back: the value a T-typed intermediate holds in torch's op-by-op evaluation
template <typename T>
inline float round_to(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return widen(narrow<T>(x));
  }
}

// Rows t0..t0+nt-1, columns c0..c0+nc-1 of a matrix with strides (s0, s1) into tile [nt, nc] (float32).
template <typename T>
inline void load_rows(const T* x, int64_t s0, int64_t s1, int64_t t0, int64_t nt, int64_t c0, int64_t nc,
                      float* tile) {
  if (s1 == 1) {
    for (int64_t r = 0; r < nt; ++r) {
      const T* row = x + (t0 + r) * s0 + c0;
      float* dst = tile + r * nc;
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) dst[c] = widen(row[c]);
    }
  } else {  // transposed (s0 == 1) or any other layout: walk each column down the block's rows
    for (int64_t c = 0; c < nc; ++c) {
      const T* col = x + (c0 + c) * s1 + t0 * s0;
      for (int64_t r = 0; r < nt; ++r) tile[r * nc + c] = widen(col[r * s0]);
    }
  }
}

// exp(x) for float32 in plain arithmetic, so that loops of it vectorise (std::exp stays a scalar call per
// element): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial, 2^n through the exponent
// bits. Relative error ~2e-7 (a couple of ulp), against glibc's and Sleef's ~1 ulp.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);  // 2^n stays a normal float; beyond, exp under/overflows anyway
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 split in two for an exact n * ln2_hi
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

template <typename T>
inline void store_row(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<T>(src[i]);
}

constexpr int64_t kTileRows = 16;  // rows per task of the element-wise ops: a tile of them stays in L2

}  // namespace sgagent
