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

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define SGAGENT_AVX512_BF16 1
#include <immintrin.h>
#endif

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

#ifdef SGAGENT_AVX512_BF16
// 16 lanes at a time for bf16 on CPUs with AVX512-BF16: vcvtneps2bf16 rounds to nearest-even in one instruction
// where the portable narrow() takes six (it differs only on float32 denormals, which it flushes to zero).
namespace v16 {
inline __m512 load(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
inline __m256i to_bf16(__m512 x) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)); }
inline void store(c10::BFloat16* p, __m512 x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(x)); }
inline void store(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
// x rounded to bf16 and back (round_to<BFloat16>)
inline __m512 round(__m512 x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(x)), 16));
}

// fast_exp on 16 lanes
inline __m512 exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// r[i] holds row i of a 16x16 matrix of 32-bit words; afterwards r[i] holds column i
inline void transpose(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // each 128-bit lane now holds a 4x4 block in place; gather the blocks: lanes 0/2 then 1/3 of row pairs
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}
}  // namespace v16
#endif

template <typename T>
inline void widen_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

// Rows t0..t0+nt-1, columns c0..c0+nc-1 of a matrix with strides (s0, s1) into tile [nt, nc] (float32).
template <typename T>
inline void load_rows(const T* x, int64_t s0, int64_t s1, int64_t t0, int64_t nt, int64_t c0, int64_t nc,
                      float* tile) {
  if (s1 == 1) {
    for (int64_t r = 0; r < nt; ++r) widen_row(x + (t0 + r) * s0 + c0, tile + r * nc, nc);
    return;
  }
  // transposed (s0 == 1) or any other layout: walk each column down the block's rows
  int64_t c = 0;
#ifdef SGAGENT_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>) {
    // 16 columns at a time: each column's 16 rows are one load, then a transpose
    for (; s0 == 1 && nt == 16 && c + 16 <= nc; c += 16) {
      __m512i blk[16];
      for (int j = 0; j < 16; ++j) blk[j] = _mm512_castps_si512(v16::load(x + (c0 + c + j) * s1 + t0));
      v16::transpose(blk);
      for (int r = 0; r < 16; ++r) _mm512_storeu_si512(tile + r * nc + c, blk[r]);
    }
  }
#endif
  for (; c < nc; ++c) {
    const T* col = x + (c0 + c) * s1 + t0 * s0;
    for (int64_t r = 0; r < nt; ++r) tile[r * nc + c] = widen(col[r * s0]);
  }
}

template <typename T>
inline void store_row(const float* src, T* dst, int64_t n) {
  int64_t i = 0;
#ifdef SGAGENT_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    for (; i + 16 <= n; i += 16) v16::store(dst + i, v16::load(src + i));
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) dst[j] = narrow<T>(src[j]);
}

constexpr int64_t kTileRows = 16;  // rows per task of the element-wise ops: a tile of them stays in L2

}  // namespace sgagent
