// Paged attention for bfloat16 caches on CPUs with AVX512-BF16 (Sapphire Rapids and later), pages of 16 keys.
//
// The generic kernel (paged_attention.cpp) widens every key and value to float32 and takes each score as a
// D-wide dot product with a horizontal sum at the end; on a 64-row decode step that compute, not memory, was
// most of its time (0.72 ms a layer with the pages in cache, 0.95 ms from DRAM). Here a page's 16 keys of one
// K/V head are transposed into bf16 pairs ("VNNI" order: kt[j] holds pair j of all 16 keys) once, and shared
// by every query row of the head (GQA puts several there): a row's 16 scores are then D/2 vdpbf16ps into one
// register, no horizontal sums. The products of bf16 numbers are exact in float32 and they are summed in
// float32, so scores match a float32 dot product of the same bf16 inputs up to summation order. Softmax
// weights stay float32 for P @ V (values widened per key, several rows' accumulators held in registers).

#pragma once

#include "cpu_common.h"
#include "paged_tasks.h"

#ifdef SGAGENT_AVX512_BF16
#define SGAGENT_AVX512_BF16_ATTENTION 1

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sgagent::avx512 {

constexpr int kKeys = 16;  // keys of a page = float32 lanes of a register: the one page size this path takes

using v16::exp;
using v16::transpose;

// acc[i] = acc[i] * rescale[i] + sum over this page's keys o of p[i][o] * v[o], for NR rows (registers)
template <int D, int NR>
inline void accumulate_values(float* const* acc, const float* rescale, const float* const* p, const c10::BFloat16* v,
                              int64_t v_stride, int64_t cnt) {
  constexpr int C = D / 16;
  __m512 a[NR][C];
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < C; ++c) a[i][c] = _mm512_mul_ps(_mm512_loadu_ps(acc[i] + 16 * c), _mm512_set1_ps(rescale[i]));
  for (int64_t o = 0; o < cnt; ++o) {
    __m512 x[C];
    for (int c = 0; c < C; ++c) x[c] = v16::load(v + o * v_stride + 16 * c);
    for (int i = 0; i < NR; ++i) {
      const __m512 w = _mm512_set1_ps(p[i][o]);
      for (int c = 0; c < C; ++c) a[i][c] = _mm512_fmadd_ps(w, x[c], a[i][c]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc[i] + 16 * c, a[i][c]);
}

// The kernel of paged_tasks.h's run_paged for bf16 caches, page size 16, head size D (a multiple of 32).
template <int D>
struct PagedBF16 {
  using BF = c10::BFloat16;
  using Element = BF;
  static constexpr int pairs = D / 2;
  // rows per P @ V register block: their accumulators (D / 16 registers a row) take 16 of the 32 registers
  static constexpr int RB = std::max(1, 16 / (D / 16));
  const BF* kp;
  const BF* vp;
  int64_t H;
  float scale;

  struct State : SoftmaxRows {
    std::vector<uint32_t> qpair;  // the query as bf16 pairs
    std::vector<float> prob, resc;
  };

  PagedBF16(const at::Tensor& kc, const at::Tensor& vc, double sc)
      : kp(kc.data_ptr<BF>()), vp(vc.data_ptr<BF>()), H(kc.size(1)), scale(static_cast<float>(sc)) {}

  void begin(State& st, int64_t rows) const {
    const int64_t HR = H * rows;
    st.reset(H, rows, D);
    st.qpair.resize(HR * pairs);
    st.prob.resize(HR * kKeys);
    st.resc.resize(HR);
  }

  void query(State& st, int64_t h, int64_t i, const BF* src, int64_t qsd) const {
    uint32_t* dst = st.qpair.data() + (h * st.rows + i) * pairs;
    for (int j = 0; j < pairs; ++j)
      dst[j] = static_cast<uint32_t>(src[(2 * j) * qsd].x) | static_cast<uint32_t>(src[(2 * j + 1) * qsd].x) << 16;
  }

  void attend(State& st, const int32_t* l, const int64_t* pg) const {
    const int64_t R = st.rows, block = kKeys * H * D;
    const int64_t L = *std::max_element(l, l + R);
    const __m512 sc = _mm512_set1_ps(scale);
    const float ninf = -std::numeric_limits<float>::infinity();
    alignas(64) uint32_t kt[pairs * kKeys];
    for (int64_t p = 0; p * kKeys < L; ++p) {
      const int64_t first = p * kKeys, cnt = std::min<int64_t>(kKeys, L - first);
      const BF* kpage = kp + pg[p] * block;
      const BF* vpage = vp + pg[p] * block;
      const bool more = (p + 1) * kKeys < L;
      const char* nk = more ? reinterpret_cast<const char*>(kp + pg[p + 1] * block) : nullptr;
      const char* nv = more ? reinterpret_cast<const char*>(vp + pg[p + 1] * block) : nullptr;
      const int64_t bytes = block * static_cast<int64_t>(sizeof(BF)), share = bytes / H;
      const __mmask16 present = static_cast<__mmask16>((1u << cnt) - 1);
      for (int64_t h = 0; h < H; ++h) {
        // the pool is far larger than any cache: fetch a share of the next page with each head (all of it at
        // once filled the line-fill buffers and stalled: 0.75 vs 0.70 ms a 64 x 160 layer)
        if (more) {
          for (int64_t b = h * share; b < (h + 1 == H ? bytes : (h + 1) * share); b += 64) {
            _mm_prefetch(nk + b, _MM_HINT_T0);
            _mm_prefetch(nv + b, _MM_HINT_T0);
          }
        }
        // this head's keys as bf16 pairs, transposed: kt[j * 16 + o] = pair j of key o (absent keys: zero)
        for (int b = 0; b < pairs / 16; ++b) {
          __m512i rows[16];
          for (int o = 0; o < kKeys; ++o)
            rows[o] = _mm512_maskz_loadu_epi32(o < cnt ? 0xffff : 0, kpage + (o * H + h) * D + 32 * b);
          transpose(rows);
          for (int j = 0; j < 16; ++j) _mm512_store_si512(kt + (16 * b + j) * kKeys, rows[j]);
        }
        for (int64_t r = 0; r < R; ++r) {
          const int64_t hr = h * R + r, stop = std::min<int64_t>(cnt, l[r] - first);
          float* pr = st.prob.data() + hr * kKeys;
          if (stop <= 0) {  // this row sees none of the page: it adds nothing and keeps its scale
            std::fill(pr, pr + kKeys, 0.f);
            st.resc[hr] = 1.f;
            continue;
          }
          const uint32_t* qr = st.qpair.data() + hr * pairs;
          __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();  // two chains: vdpbf16ps has latency
          for (int j = 0; j < pairs; j += 2) {
            s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_set1_epi32(static_cast<int>(qr[j])),
                                  (__m512bh)_mm512_load_si512(kt + j * kKeys));
            s1 = _mm512_dpbf16_ps(s1, (__m512bh)_mm512_set1_epi32(static_cast<int>(qr[j + 1])),
                                  (__m512bh)_mm512_load_si512(kt + (j + 1) * kKeys));
          }
          const __mmask16 seen = present & static_cast<__mmask16>((1u << stop) - 1);
          const __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(ninf), seen, _mm512_mul_ps(_mm512_add_ps(s0, s1), sc));
          const float mx = std::max(st.m[hr], _mm512_reduce_max_ps(s));
          const __m512 e = _mm512_maskz_mov_ps(seen, exp(_mm512_sub_ps(s, _mm512_set1_ps(mx))));
          st.resc[hr] = std::exp(st.m[hr] - mx);  // exp(-inf) = 0 on the first page
          st.sum[hr] = st.sum[hr] * st.resc[hr] + _mm512_reduce_add_ps(e);
          st.m[hr] = mx;
          _mm512_storeu_ps(pr, e);
        }
        const BF* vhead = vpage + h * D;
        for (int64_t rb = 0; rb < R; rb += RB) {
          const int nr = static_cast<int>(std::min<int64_t>(RB, R - rb));
          float* a[RB];
          const float* w[RB];
          for (int i = 0; i < nr; ++i) {
            a[i] = st.acc.data() + (h * R + rb + i) * D;
            w[i] = st.prob.data() + (h * R + rb + i) * kKeys;
          }
          const float* rs = st.resc.data() + h * R + rb;
          switch (nr) {  // the register block's row count is a template parameter: its accumulators stay in registers
            case 1: accumulate_values<D, 1>(a, rs, w, vhead, H * D, cnt); break;
            case 2: if constexpr (RB >= 2) accumulate_values<D, 2>(a, rs, w, vhead, H * D, cnt); break;
            case 3: if constexpr (RB >= 3) accumulate_values<D, 3>(a, rs, w, vhead, H * D, cnt); break;
            default: if constexpr (RB >= 4) accumulate_values<D, RB>(a, rs, w, vhead, H * D, cnt); break;
          }
        }
      }
    }
  }
};

}  // namespace sgagent::avx512

#endif
