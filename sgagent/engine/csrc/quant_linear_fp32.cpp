// y = x @ W^T for float32 activations and GGUF block-quantized weights (Q4_1, Q8_0): quant_linear's float32 case.
//
// Why: on a CPU without native bf16 the engine runs float32, where the default model's dense projections and
// lm_head are 540 MB a decode step to stream from memory; in their GGUF blocks they are 97 MB. The weights are
// dequantized to exactly the float32 values the dense model holds (gguf-py's d * q + m: the product of an fp16
// scale and a 4- or 8-bit quant is exact in float32, so one fma rounds where gguf-py's add does).
//
// Each output element is reduced in one fixed order, whatever the row count, the threads or the code path: 8
// lanes, lane l the fma chain over k = l, l + 8, l + 16, ... from zero, then the lanes summed as
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). A row's values so never depend on the step's other rows
// (the engine's batch invariance, model/invariance.py), and the portable loop gives the AVX2 kernel's bits.
//
// Work is split by panels of 16 outputs; a thread dequantizes a panel's K x 16 weights once per block of
// kRowBlock rows of x (so that block stays in L2 while the panel's products run over it).

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "ops.h"
#include "quant_tiles.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SGAGENT_FP32_AVX2 1
#endif

namespace {

using namespace sgagent::tiles;

constexpr int64_t kRowBlock = 64;

// The panel of output tile nt: row n (of 16) holds its K weights contiguously, panel[n * K + k].
void dequant_panel(const uint8_t* tiles, int64_t qtype, int64_t K, float* panel) {
  const int64_t KB = K / kTileK, tb = tile_bytes(qtype);
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint8_t* t = tiles + kb * tb;
    for (int n = 0; n < kTileN; ++n) {
      float* dst = panel + n * K + kb * kTileK;
      const float d = half_to_float(t + 2 * n);
      if (qtype == kQ4_1) {
        const float m = half_to_float(t + 32 + 2 * n);
        const uint8_t* b = t + 64 + 16 * n;  // byte j: element j in the low nibble, j + 16 in the high one
#ifdef SGAGENT_FP32_AVX2
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), mask = _mm_set1_epi8(15);
        const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int p = 0; p < 4; ++p)
          _mm256_storeu_ps(dst + 8 * p, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p])), vd, vm));
#else
        for (int j = 0; j < 16; ++j) {
          dst[j] = std::fma(static_cast<float>(b[j] & 15), d, m);
          dst[j + 16] = std::fma(static_cast<float>(b[j] >> 4), d, m);
        }
#endif
      } else {
        const int8_t* q = reinterpret_cast<const int8_t*>(t + 32 + 32 * n);
        for (int k = 0; k < kTileK; ++k) dst[k] = static_cast<float>(q[k]) * d;
      }
    }
  }
}

// MR rows of x (stride K) times NR panel rows (stride K) into out (row stride ldo), in the fixed order above.
template <int MR, int NR>
inline void product(const float* x, const float* w, int64_t K, float* out, int64_t ldo) {
#ifdef SGAGENT_FP32_AVX2
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < K; c += 8) {
    __m256 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * K + c);
    for (int j = 0; j < NR; ++j) {
      const __m256 wv = _mm256_loadu_ps(w + j * K + c);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[i][j]), _mm256_extractf128_ps(acc[i][j], 1));
      const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));  // [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7)]
      out[i * ldo + j] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
    }
#else
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float l[8] = {};
      for (int64_t c = 0; c < K; c += 8)
        for (int e = 0; e < 8; ++e) l[e] = std::fma(x[i * K + c + e], w[j * K + c + e], l[e]);
      out[i * ldo + j] = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    }
#endif
}

// Rows [m0, m1) of x times one panel into columns [col, col + 16) of y.
void panel_rows(const float* x, const float* panel, int64_t m0, int64_t m1, int64_t K, float* y, int64_t N,
                int64_t col) {
  int64_t m = m0;
  for (; m + 2 <= m1; m += 2)
    for (int n = 0; n < kTileN; n += 4) product<2, 4>(x + m * K, panel + n * K, K, y + m * N + col + n, N);
  if (m < m1)
    for (int n = 0; n < kTileN; n += 8) product<1, 8>(x + m * K, panel + n * K, K, y + m * N + col + n, N);
}

}  // namespace

namespace sgagent::ops {

void quant_linear_fp32(const float* x, int64_t M, const uint8_t* packed, int64_t qtype, int64_t N, int64_t K,
                       float* y) {
  const int64_t NT = N / kTileN, tb = tile_bytes(qtype), KB = K / kTileK;
  at::parallel_for(0, NT, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> panel;
    panel.resize(kTileN * K);
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock)
      for (int64_t nt = t0; nt < t1; ++nt) {
        dequant_panel(packed + nt * KB * tb, qtype, K, panel.data());
        panel_rows(x, panel.data(), m0, std::min(M, m0 + kRowBlock), K, y, N, nt * kTileN);
      }
  });
}

}  // namespace sgagent::ops
