// y = x @ W^T for bf16 activations and GGUF block-quantized weights (Q4_1, Q8_0), dequantized on the fly (float32
// activations: quant_linear_fp32.cpp).
//
// Why: a CPU decode step is bound by streaming the weights from memory. As bf16 the default model's
// projections and lm_head are 271 MB a step; kept in their GGUF blocks they are 97 MB. Each 16 x 32 tile of W
// is dequantized to gguf-py's float32 values (d * q + m; the product of an fp16 scale and a 4- or 8-bit quant
// is exact in float32, so an fma rounds where gguf-py's add does) and rounded to bf16 (nearest even, as torch's
// .to(bfloat16)): the weights multiplied are bit for bit the bf16 model's; only the order of the float32 sums
// may differ from oneDNN's.
//
// Layout (packed by model/quantized.py): [N/16, K/32] tiles, each holding 16 output rows x 32 inputs, the
// blocks of 16 rows side by side so a tile is one contiguous read, its scales first:
//   Q4_1 tile (320 B): d[16] fp16, m[16] fp16, then 16 rows of 16 bytes in GGUF's order (byte j: element j in
//                      the low nibble, element j + 16 in the high one)
//   Q8_0 tile (544 B): d[16] fp16, then 16 rows of 32 int8
// With AMX (Sapphire Rapids and later) W's dequantized tile is the A operand of tdpbf16ps (a row per output
// feature, as stored: no transpose) and x^T, rearranged once per call, the B operand; C comes out [n, m] and is
// transposed in registers into row-major y. Elsewhere a plain loop gives the same products (used by tests, not
// by the engine, which keeps dense bf16 weights there).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu_common.h"
#include "ops.h"
#include "quant_tiles.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(SGAGENT_AVX512_BF16)
#define SGAGENT_AMX 1
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

using namespace sgagent::tiles;

// One tile dequantized to float32 w[n][k] (n < 16, k < 32), each value rounded to bf16: the portable path.
void dequant_tile_ref(const uint8_t* t, int64_t qtype, float w[kTileN][kTileK]) {
  for (int n = 0; n < 16; ++n) {
    const float d = half_to_float(t + 2 * n);
    if (qtype == kQ4_1) {
      const float m = half_to_float(t + 32 + 2 * n);
      for (int j = 0; j < 16; ++j) {
        const uint8_t b = t[64 + 16 * n + j];
        for (int k : {j, j + 16}) {
          const float q = static_cast<float>(k < 16 ? b & 15 : b >> 4);
          w[n][k] = sgagent::round_to<c10::BFloat16>(q * d + m);
        }
      }
    } else {
      for (int k = 0; k < 32; ++k)
        w[n][k] = sgagent::round_to<c10::BFloat16>(static_cast<float>(static_cast<int8_t>(t[32 + 32 * n + k])) * d);
    }
  }
}

void linear_ref(const c10::BFloat16* x, int64_t M, const uint8_t* packed, int64_t qtype, int64_t N, int64_t K,
                c10::BFloat16* out) {
  const int64_t KB = K / kTileK, tb = tile_bytes(qtype);
  at::parallel_for(0, N / kTileN, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(M * kTileN);
    float w[kTileN][kTileK];
    for (int64_t nt = t0; nt < t1; ++nt) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t kb = 0; kb < KB; ++kb) {
        dequant_tile_ref(packed + (nt * KB + kb) * tb, qtype, w);
        for (int64_t m = 0; m < M; ++m)
          for (int n = 0; n < kTileN; ++n) {
            float s = 0.f;
            for (int k = 0; k < kTileK; ++k) s += sgagent::widen(x[m * K + kb * kTileK + k]) * w[n][k];
            acc[m * kTileN + n] += s;
          }
      }
      for (int64_t m = 0; m < M; ++m)
        for (int n = 0; n < kTileN; ++n)
          out[m * N + nt * kTileN + n] = sgagent::narrow<c10::BFloat16>(acc[m * kTileN + n]);
    }
  });
}

#ifdef SGAGENT_AMX
bool amx_permitted() {
  // Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), per process
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C, 2 x 2 blocks of 16 (n) x 16 (m) float32; 4, 7: A, two panels' 16 rows x 32 bf16 of W; 5, 6:
// B, two blocks of x^T as 16 k-pairs x 16 m. Every tile is 16 rows of 64 bytes.
const TileConfig& tile_config() {
  static const TileConfig cfg = [] {
    TileConfig c;
    for (int i = 0; i < 8; ++i) c.colsb[i] = 64, c.rows[i] = 16;
    return c;
  }();
  return cfg;
}

// W's tile as 16 rows of 32 bf16 (64 B each). Q4_1: each row's 16 possible values (d * q + m, q = 0..15) as
// a bf16 table, then one vpermw by the row's nibbles. The dequantization, not the memory, bounds a decode step's
// projections (a cache-resident matrix runs no faster than one streamed from DRAM), so it is kept to the
// fewest shuffle-port instructions: the row's 16 bytes are loaded into both halves of a ymm and widened to 32
// words (byte j twice), the upper 16 shifted right by 4 (high nibbles); the low words keep their high nibble,
// which vpermw's 5-bit index reaches into the table's upper half: a copy of the lower one.
inline void dequant_tile_amx(const uint8_t* t, int64_t qtype, uint16_t* out) {
  alignas(64) float d[16];
  _mm512_store_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t))));
  if (qtype == kQ4_1) {
    alignas(64) float m[16];
    _mm512_store_ps(m, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 32))));
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i shift = _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0x0004000400040004,
                                           0x0004000400040004, 0, 0, 0, 0);
    const uint8_t* q = t + 64;
    for (int n = 0; n < 16; ++n) {
      const __m512 v = _mm512_fmadd_ps(iota, _mm512_set1_ps(d[n]), _mm512_set1_ps(m[n]));
      const __m512i table = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v, v));
      const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * n)));
      const __m512i idx = _mm512_srlv_epi16(_mm512_cvtepu8_epi16(b), shift);
      _mm512_store_si512(out + 32 * n, _mm512_permutexvar_epi16(idx, table));
    }
  } else {
    const int8_t* q = reinterpret_cast<const int8_t*>(t + 32);
    for (int n = 0; n < 16; ++n) {
      const __m512 dn = _mm512_set1_ps(d[n]);
      const auto half = [&](int at) {  // 16 of the row's int8 quants as float32
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + at))));
      };
      const __m512 lo = half(32 * n), hi = half(32 * n + 16);
      const __m512 wl = _mm512_mul_ps(lo, dn), wh = _mm512_mul_ps(hi, dn);
      _mm512_store_si512(out + 32 * n, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(wh, wl)));
    }
  }
}

// Tasks i0..i1 of x [M, K] (contiguous) -> B tiles xt[kb][mb]: 16 rows r of (x[m][32 kb + 2r],
// x[m][32 kb + 2r + 1]) for the block's 16 m; rows past M are zero. Task i = kb * MB + mb.
void pack_x(const uint32_t* xp, int64_t M, int64_t ld, int64_t MB, int64_t i0, int64_t i1, uint32_t* xt) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t kb = i / MB, mb = i % MB;
    __m512i r[16];
    for (int j = 0; j < 16; ++j) {
      const int64_t m = mb * 16 + j;
      r[j] = m < M ? _mm512_loadu_si512(xp + m * ld + kb * 16) : _mm512_setzero_si512();
    }
    sgagent::v16::transpose(r);
    for (int j = 0; j < 16; ++j) _mm512_store_si512(xt + (i * 16 + j) * 16, r[j]);
  }
}

// A C tile (16 n x 16 m float32) -> y[m0 + j][0 .. 15] in bf16 for the rows below M
inline void store_transposed(const float* c, int64_t m0, int64_t M, c10::BFloat16* y, int64_t N) {
  __m512i r[16];
  for (int j = 0; j < 16; ++j) r[j] = _mm512_load_si512(c + 16 * j);
  sgagent::v16::transpose(r);
  for (int j = 0; j < 16 && m0 + j < M; ++j) sgagent::v16::store(y + (m0 + j) * N, _mm512_castsi512_ps(r[j]));
}

// Tiles prefetched ahead of the one dequantized (7.5 KB of Q4_1): 1-64 rows 14-24% faster than none, 8-16% than
// 8 ahead. Past the last panel they name nothing of ours, which a prefetch (it never faults) allows.
constexpr int64_t kPrefetch = 24;

// C[2a + b] = sum over k of W panel a (A operand) . x^T block b (B operand), for NA panels of 16 n and NB blocks
// of 16 m: each B load serves NA products and each A load NB (the loads from L2, not the products, bound
// a pass of four C tiles). On the first pass over a panel pair its tiles are dequantized two k-steps ahead of
// the products (the AMX unit works beside the vector ports, and by then a tile's stores have left the store
// buffer); later passes over more m reuse them.
template <int NA, int NB>
void block_product(const uint8_t* const w[2], int64_t qtype, int64_t tb, const uint32_t* xt, int64_t MB,
                   int64_t KB, uint16_t* const panel[2], bool dequantized, float* cbuf) {
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (NA > 1) _tile_zero(2);
  if constexpr (NA > 1 && NB > 1) _tile_zero(3);
  const auto dequant = [&](int64_t kb) {
    for (int a = 0; a < NA; ++a) {
      // the tiles kPrefetch steps on: the hardware streamer stops at each 4 KB page of these 5-10 KB panels
      const char* ahead = reinterpret_cast<const char*>(w[a] + (kb + kPrefetch) * tb);
      for (int64_t line = 0; line < tb; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
      dequant_tile_amx(w[a] + kb * tb, qtype, panel[a] + kb * 512);
    }
  };
  if (!dequantized)
    for (int64_t kb = 0; kb < std::min<int64_t>(2, KB); ++kb) dequant(kb);
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint32_t* b = xt + kb * MB * 256;
    _tile_loadd(4, panel[0] + kb * 512, 64);
    _tile_loadd(5, b, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NB > 1) {
      _tile_loadd(6, b + 256, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (NA > 1) {
      _tile_loadd(7, panel[1] + kb * 512, 64);
      _tile_dpbf16ps(2, 7, 5);
      if constexpr (NB > 1) _tile_dpbf16ps(3, 7, 6);
    }
    if (!dequantized && kb + 2 < KB) dequant(kb + 2);
  }
  _tile_stored(0, cbuf, 64);
  if constexpr (NB > 1) _tile_stored(1, cbuf + 256, 64);
  if constexpr (NA > 1) _tile_stored(2, cbuf + 512, 64);
  if constexpr (NA > 1 && NB > 1) _tile_stored(3, cbuf + 768, 64);
}

template <typename T>
inline T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

inline std::pair<int64_t, int64_t> share(int64_t n, int tid, int nthr) {
  return {n * tid / nthr, n * (tid + 1) / nthr};
}

// One OpenMP region per call (a second fork/join for packing x cost as much as a small call's products):
// the threads pack x^T together, meet at a barrier, then split W's 16-row panels.
void linear_amx(const at::Tensor& x, const uint8_t* packed, int64_t qtype, int64_t N, int64_t K,
                c10::BFloat16* y) {
  const int64_t M = x.size(0), KB = K / kTileK, MB = (M + 15) / 16, tb = tile_bytes(qtype), NT = N / kTileN;
  const at::Tensor xc = x.contiguous();
  const auto* xp = reinterpret_cast<const uint32_t*>(xc.data_ptr<c10::BFloat16>());  // bf16 pairs
  const at::Tensor xt_buf = at::empty({KB * MB * 256 + 16}, x.options().dtype(at::kInt));
  uint32_t* xt = align64(static_cast<uint32_t*>(xt_buf.data_ptr()));
  const int nthr = static_cast<int>(std::min<int64_t>(at::get_num_threads(), NT));
#pragma omp parallel num_threads(nthr)
  {
    const int tid = omp_get_thread_num();
    const auto [i0, i1] = share(KB * MB, tid, nthr);
    pack_x(xp, M, K / 2, MB, i0, i1, xt);
#pragma omp barrier
    _tile_loadconfig(&tile_config());  // per call and thread: oneDNN's kernels load their own configurations
    thread_local std::vector<uint16_t> panel_buf;
    panel_buf.resize(2 * KB * 512 + 32);
    uint16_t* const p0 = align64(panel_buf.data());
    uint16_t* const panel[2] = {p0, p0 + KB * 512};
    alignas(64) float cbuf[4 * 256];
    const auto [t0, t1] = share(NT, tid, nthr);
    for (int64_t nt = t0; nt < t1; nt += 2) {
      const int na = static_cast<int>(std::min<int64_t>(2, t1 - nt));
      const uint8_t* const w[2] = {packed + nt * KB * tb, packed + (nt + na - 1) * KB * tb};
      for (int64_t mb = 0; mb < MB; mb += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, MB - mb));
        const uint32_t* b = xt + mb * 256;
        const bool again = mb > 0;
        if (na == 2 && nb == 2) block_product<2, 2>(w, qtype, tb, b, MB, KB, panel, again, cbuf);
        else if (na == 2) block_product<2, 1>(w, qtype, tb, b, MB, KB, panel, again, cbuf);
        else if (nb == 2) block_product<1, 2>(w, qtype, tb, b, MB, KB, panel, again, cbuf);
        else block_product<1, 1>(w, qtype, tb, b, MB, KB, panel, again, cbuf);
        for (int a = 0; a < na; ++a)
          for (int j = 0; j < nb; ++j)
            store_transposed(cbuf + 256 * (2 * a + j), (mb + j) * 16, M, y + (nt + a) * kTileN, N);
      }
    }
    _tile_release();
  }
}
#endif

bool fast_path() {
#ifdef SGAGENT_AMX
  return amx_permitted();
#else
  return false;
#endif
}

}  // namespace

namespace sgagent::ops {

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& packed, int64_t qtype, int64_t N, int64_t K,
                        bool allow_fast) {
  TORCH_CHECK(qtype == kQ4_1 || qtype == kQ8_0, "quant_linear: qtype must be 3 (Q4_1) or 8 (Q8_0)");
  const bool fp32 = x.scalar_type() == at::kFloat;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == K && (fp32 || x.scalar_type() == at::kBFloat16),
              "quant_linear: x must be a CPU bfloat16 or float32 [M, K] tensor");
  TORCH_CHECK(N % kTileN == 0 && K % kTileK == 0, "quant_linear: N must be a multiple of 16, K of 32");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.numel() == (N / kTileN) * (K / kTileK) * tile_bytes(qtype),
              "quant_linear: packed does not hold [N/16, K/32] tiles of this qtype");
  const int64_t M = x.size(0);
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;
  const uint8_t* w = packed.data_ptr<uint8_t>();
  if (fp32) {  // quant_linear_fp32.cpp: one reduction order at any row count, on AVX-512, AVX2 or portably
    const at::Tensor xc = x.contiguous();
    quant_linear_fp32(xc.data_ptr<float>(), M, w, qtype, N, K, out.data_ptr<float>(), allow_fast);
    return out;
  }
#ifdef SGAGENT_AMX
  if (allow_fast && amx_permitted()) {
    linear_amx(x, w, qtype, N, K, out.data_ptr<c10::BFloat16>());
    return out;
  }
#endif
  const at::Tensor xc = x.contiguous();
  linear_ref(xc.data_ptr<c10::BFloat16>(), M, w, qtype, N, K, out.data_ptr<c10::BFloat16>());
  return out;
}

}  // namespace sgagent::ops

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("quant_linear(Tensor x, Tensor packed, int qtype, int N, int K, bool allow_fast=True) -> Tensor");
  m.impl("quant_linear", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::quant_linear));
  m.def("quant_linear_fast() -> bool");
  m.impl("quant_linear_fast", c10::DispatchKey::CatchAll, TORCH_FN(fast_path));
  m.def("quant_linear_fp32_wide() -> bool");
  m.impl("quant_linear_fp32_wide", c10::DispatchKey::CatchAll, TORCH_FN(sgagent::ops::quant_linear_fp32_wide));
}
