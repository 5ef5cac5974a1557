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
// Work is split by panels of 16 outputs; a thread dequantizes a panel's K x 16 weights once per block of rows of
// x (at most kRowBlockBytes of them, so that block stays in L2 while the panel's products run over it).
//
// With AVX-512 the same 8-lane chains run two outputs to a 512-bit register: the panel is dequantized with the
// chunks of outputs 2p and 2p + 1 side by side, and each 8-float chunk of x is broadcast to both halves, so a
// 3-row x 8-pair block keeps 24 accumulators in 32 registers (AVX2's 2 x 4 block of 16 registers is bound by
// its loads at many rows). Lane for lane it is the AVX2 kernel's arithmetic, so the bits are the same.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "quant_tiles.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SGAGENT_FP32_AVX2 1
#endif
#if defined(SGAGENT_FP32_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
#define SGAGENT_FP32_AVX512 1
#endif

namespace {

using namespace sgagent::tiles;

constexpr int64_t kRowBlock = 192;  // rows of x a panel is dequantized for, at most...
constexpr int64_t kRowBlockBytes = 512 << 10;  // ...and at most this much of x (a multiple of 3 rows: AVX-512's groups)

int64_t row_block(int64_t K) { return std::clamp<int64_t>(kRowBlockBytes / (4 * K) / 3 * 3, 3, kRowBlock); }
constexpr int64_t kSegK = 640;  // AVX-512: columns of a panel (16 x kSegK floats) run over by a whole row block

// Output n of tile t: its 32 weights into dst.
inline void dequant_tile_row(const uint8_t* t, int64_t qtype, int n, float* dst) {
  const float d = half_to_float(t + 2 * n);
  if (qtype == kQ4_1) {
    const float m = half_to_float(t + 32 + 2 * n);
    const uint8_t* b = t + 64 + 16 * n;  // byte j: element j in the low nibble, j + 16 in the high one
#ifdef SGAGENT_FP32_AVX2
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int q = 0; q < 4; ++q)
      _mm256_storeu_ps(dst + 8 * q, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[q])), vd, vm));
#else
    for (int j = 0; j < 16; ++j) {
      dst[j] = std::fma(static_cast<float>(b[j] & 15), d, m);
      dst[j + 16] = std::fma(static_cast<float>(b[j] >> 4), d, m);
    }
#endif
  } else {
    const int8_t* q = reinterpret_cast<const int8_t*>(t + 32 + 32 * n);
#ifdef SGAGENT_FP32_AVX2
    const __m256 vd = _mm256_set1_ps(d);
    for (int p = 0; p < 4; ++p) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * p));
      _mm256_storeu_ps(dst + 8 * p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), vd));
    }
#else
    for (int k = 0; k < kTileK; ++k) dst[k] = static_cast<float>(q[k]) * d;
#endif
  }
}

// The panel of output tile nt: row n (of 16) holds its K weights contiguously, panel[n * K + k].
void dequant_panel(const uint8_t* tiles, int64_t qtype, int64_t K, float* panel) {
  const int64_t KB = K / kTileK, tb = tile_bytes(qtype);
  for (int64_t kb = 0; kb < KB; ++kb)
    for (int n = 0; n < kTileN; ++n) dequant_tile_row(tiles + kb * tb, qtype, n, panel + n * K + kb * kTileK);
}

#ifdef SGAGENT_FP32_AVX512
// The panel paired, for the AVX-512 products: pair p holds, chunk after chunk, 8 weights of output 2p then the
// same 8 of 2p + 1. Made a pair of outputs at a time: the tile's 16 fp16 scales (and minimums) convert
// in one instruction (exactly, as half_to_float), and each 512-bit fma writes 8 weights of both outputs.
void dequant_panel_paired(const uint8_t* tiles, int64_t qtype, int64_t K, float* panel) {
  const int64_t KB = K / kTileK, tb = tile_bytes(qtype);
  __m512i pick[kTileN / 2];  // pair p: lanes 0-7 take element 2p, lanes 8-15 element 2p + 1
  for (int p = 0; p < kTileN / 2; ++p)
    pick[p] = _mm512_set_epi32(2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1,
                               2 * p + 1, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p);
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint8_t* t = tiles + kb * tb;
    const __m512 d16 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)));
    for (int p = 0; p < kTileN / 2; ++p) {
      float* dst = panel + p * 2 * K + kb * 64;
      const __m512 vd = _mm512_permutexvar_ps(pick[p], d16);
      __m128i chunks[4];  // chunk q: 8 quants of output 2p, then the same 8 of 2p + 1
      if (qtype == kQ4_1) {
        // rows 2p and 2p + 1 are 32 contiguous bytes; byte j: element j low, j + 16 high
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 64 + 32 * p));
        const __m256i mask = _mm256_set1_epi8(15);
        // qwords [row0 0-7, row0 8-15, row1 0-7, row1 8-15] -> [row0 0-7, row1 0-7 | row0 8-15, row1 8-15]
        const __m256i lo = _mm256_permute4x64_epi64(_mm256_and_si256(bytes, mask), _MM_SHUFFLE(3, 1, 2, 0));
        const __m256i hi =
            _mm256_permute4x64_epi64(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask), _MM_SHUFFLE(3, 1, 2, 0));
        chunks[0] = _mm256_castsi256_si128(lo), chunks[1] = _mm256_extracti128_si256(lo, 1);
        chunks[2] = _mm256_castsi256_si128(hi), chunks[3] = _mm256_extracti128_si256(hi, 1);
        const __m512 m16 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 32)));
        const __m512 vm = _mm512_permutexvar_ps(pick[p], m16);
        for (int q = 0; q < 4; ++q)
          _mm512_storeu_ps(dst + 16 * q, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(chunks[q])), vd, vm));
      } else {
        const uint8_t* r0 = t + 32 + 64 * p;
        for (int q = 0; q < 4; ++q)
          chunks[q] = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r0 + 8 * q)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(r0 + 32 + 8 * q)));
        for (int q = 0; q < 4; ++q)
          _mm512_storeu_ps(dst + 16 * q, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(chunks[q])), vd));
      }
    }
  }
}
#endif

inline float sum_lanes(const float* l) { return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])); }

// MR rows of x (stride K) times NR panel rows (stride K) into out (row stride ldo), in the fixed order above.
template <int MR, int NR>
void product_portable(const float* x, const float* w, int64_t K, float* out, int64_t ldo) {
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float l[8] = {};
      for (int64_t c = 0; c < K; c += 8)
        for (int e = 0; e < 8; ++e) l[e] = std::fma(x[i * K + c + e], w[j * K + c + e], l[e]);
      out[i * ldo + j] = sum_lanes(l);
    }
}

#ifdef SGAGENT_FP32_AVX2
inline float sum_lanes(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));  // [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7)]
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

template <int MR, int NR>
inline void product_avx2(const float* x, const float* w, int64_t K, float* out, int64_t ldo) {
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
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = sum_lanes(acc[i][j]);
}
#endif

#ifdef SGAGENT_FP32_AVX512
// Row i's 16 sums from acc[j] = [chunk lanes of output 2j | of output 2j + 1], each in the fixed order, by a
// transposing tree (a horizontal sum per output would cost as much as a fifth of a K = 576 product):
// 1. 128-bit halves added: (l0+l4, l1+l5, l2+l6, l3+l7) of four outputs a register;
// 2. lanes 0 and 2, 1 and 3 added; 3. those two added. The outputs end up in lane order o % 4, o / 4.
inline void store_sums16(const __m512* acc, float* out) {
  __m512 s1[4], s2[2];
  for (int q = 0; q < 4; ++q)
    s1[q] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * q], acc[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(acc[2 * q], acc[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int q = 0; q < 2; ++q)
    s2[q] = _mm512_add_ps(_mm512_shuffle_ps(s1[2 * q], s1[2 * q + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s1[2 * q], s1[2 * q + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 s3 = _mm512_add_ps(_mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, s3));
}

// MR rows of x times the 8 pairs of a paired panel (pair stride 2K), over x's columns [c0, c1): the chains start
// from zero at c0 == 0, else from saved (MR x 8 registers); at c1 == K the 16 sums of each row go to out, else the
// chains are saved for the next columns. Cutting K so changes no arithmetic, and keeps a wide panel's columns in
// L1 while every row group of the block runs over them.
template <int MR>
inline void product_avx512(const float* x, const float* w, int64_t K, int64_t c0, int64_t c1, __m512* saved,
                           float* out, int64_t ldo) {
  constexpr int NP = kTileN / 2;
  __m512 acc[MR][NP];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NP; ++j) acc[i][j] = c0 == 0 ? _mm512_setzero_ps() : saved[i * NP + j];
  for (int64_t c = c0; c < c1; c += 8) {
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + i * K + c));
    for (int j = 0; j < NP; ++j) {
      __m512 wv = _mm512_loadu_ps(w + j * 2 * K + 2 * c);
      // one load for the MR fmas: folded into each of them, the loads would outnumber the fmas
      asm("" : "+v"(wv));
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (c1 == K) {
    for (int i = 0; i < MR; ++i) store_sums16(acc[i], out + i * ldo);
  } else {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NP; ++j) saved[i * NP + j] = acc[i][j];
  }
}

// Rows [m0, m1) (at most kRowBlock) of x times one paired panel into columns [col, col + 16) of y.
void panel_rows_avx512(const float* x, const float* panel, int64_t m0, int64_t m1, int64_t K, float* y, int64_t N,
                       int64_t col) {
  alignas(64) static thread_local __m512 saved[kRowBlock * kTileN / 2];
  const int64_t segments = (K + kSegK - 1) / kSegK, seg = (K / segments + 7) / 8 * 8;  // even cuts, whole chunks
  for (int64_t c0 = 0; c0 < K; c0 += seg) {
    const int64_t c1 = std::min(K, c0 + seg);
    int64_t m = m0;
    for (; m + 3 <= m1; m += 3)
      product_avx512<3>(x + m * K, panel, K, c0, c1, saved + (m - m0) * 8, y + m * N + col, N);
    if (m + 2 == m1) product_avx512<2>(x + m * K, panel, K, c0, c1, saved + (m - m0) * 8, y + m * N + col, N);
    if (m + 1 == m1) product_avx512<1>(x + m * K, panel, K, c0, c1, saved + (m - m0) * 8, y + m * N + col, N);
  }
}
#endif

enum class Path { kPortable, kAvx2, kAvx512 };

Path fastest_path() {
#if defined(SGAGENT_FP32_AVX512)
  return Path::kAvx512;
#elif defined(SGAGENT_FP32_AVX2)
  return Path::kAvx2;
#else
  return Path::kPortable;
#endif
}

// Rows [m0, m1) of x times one panel into columns [col, col + 16) of y.
void panel_rows(Path path, const float* x, const float* panel, int64_t m0, int64_t m1, int64_t K, float* y,
                int64_t N, int64_t col) {
  int64_t m = m0;
  switch (path) {
#ifdef SGAGENT_FP32_AVX512
    case Path::kAvx512:
      return panel_rows_avx512(x, panel, m0, m1, K, y, N, col);
#endif
#ifdef SGAGENT_FP32_AVX2
    case Path::kAvx2:
      for (; m + 2 <= m1; m += 2)
        for (int n = 0; n < kTileN; n += 4) product_avx2<2, 4>(x + m * K, panel + n * K, K, y + m * N + col + n, N);
      if (m < m1)
        for (int n = 0; n < kTileN; n += 8) product_avx2<1, 8>(x + m * K, panel + n * K, K, y + m * N + col + n, N);
      return;
#endif
    default:
      for (; m < m1; ++m) product_portable<1, kTileN>(x + m * K, panel, K, y + m * N + col, N);
  }
}

}  // namespace

namespace sgagent::ops {

bool quant_linear_fp32_wide() { return fastest_path() == Path::kAvx512; }

void quant_linear_fp32(const float* x, int64_t M, const uint8_t* packed, int64_t qtype, int64_t N, int64_t K,
                       float* y, bool fast) {
  const int64_t NT = N / kTileN, tb = tile_bytes(qtype), KB = K / kTileK;
  const Path path = fast ? fastest_path() : Path::kPortable;
  at::parallel_for(0, NT, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> panel;
    panel.resize(kTileN * K);
    const int64_t rows = row_block(K);
    for (int64_t m0 = 0; m0 < M; m0 += rows)
      for (int64_t nt = t0; nt < t1; ++nt) {
#ifdef SGAGENT_FP32_AVX512
        if (path == Path::kAvx512)
          dequant_panel_paired(packed + nt * KB * tb, qtype, K, panel.data());
        else
#endif
          dequant_panel(packed + nt * KB * tb, qtype, K, panel.data());
        panel_rows(path, x, panel.data(), m0, std::min(M, m0 + rows), K, y, N, nt * kTileN);
      }
  });
}

}  // namespace sgagent::ops
