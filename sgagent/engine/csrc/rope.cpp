// Rotary embedding of q and k, with the fused qkv projection split into contiguous q, k and v.
//
// torch does it as a mul, a roll and an addcmul over the q and k heads, then the attention's K/V store walks
// k and v; on a decode step all of these read the projection's transposed view (see cpu_common.h) element by
// element. Rounding as that torch path (model/llama.py:rope): x * cos rounded to the dtype, then
// + roll(x) * sin (sin carrying rotate_half's sign) in float32, rounded once.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include <type_traits>

#include "cpu_common.h"
#include "ops.h"

namespace {

using sgagent::kTileRows;

template <typename T>
void rope_impl(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t H, int64_t Hkv,
               at::Tensor& q, at::Tensor& k, at::Tensor& v) {
  const int64_t rows = qkv.size(0), W = qkv.size(1), D = W / (H + 2 * Hkv);
  using sgagent::round_to;
  const T* x = qkv.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  at::parallel_for(0, (rows + kTileRows - 1) / kTileRows, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(kTileRows * W), rot(D);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * kTileRows, nt = std::min(kTileRows, rows - t0);
      sgagent::load_rows(x, qkv.stride(0), qkv.stride(1), t0, nt, 0, W, tile.data());
      for (int64_t r = 0; r < nt; ++r) {
        const int64_t t = t0 + r;
        const T* c = cp + t * D;
        const T* s = sp + t * D;
        for (int64_t h = 0; h < H + Hkv; ++h) {
          const float* xh = tile.data() + r * W + h * D;
          const int64_t half = D / 2;
          // roll(x, D/2): the first half pairs with the second and the other way round
          for (int64_t part = 0; part < 2; ++part) {
            const int64_t lo = part * half, other = (1 - part) * half;
            int64_t i0 = 0;
#ifdef SGAGENT_AVX512_BF16
            if constexpr (std::is_same_v<T, c10::BFloat16>) {
              namespace v16 = sgagent::v16;
              for (; i0 + 16 <= half; i0 += 16) {
                const __m512 xc = v16::round(_mm512_mul_ps(_mm512_loadu_ps(xh + lo + i0), v16::load(c + lo + i0)));
                const __m512 sum = _mm512_fmadd_ps(_mm512_loadu_ps(xh + other + i0), v16::load(s + lo + i0), xc);
                _mm512_storeu_ps(rot.data() + lo + i0, v16::round(sum));
              }
            }
#endif
#pragma omp simd
            for (int64_t i = i0; i < half; ++i)
              rot[lo + i] = round_to<T>(round_to<T>(xh[lo + i] * sgagent::widen(c[lo + i])) +
                                        xh[other + i] * sgagent::widen(s[lo + i]));
          }
          T* dst = h < H ? q.data_ptr<T>() + (t * H + h) * D : k.data_ptr<T>() + (t * Hkv + h - H) * D;
          sgagent::store_row(rot.data(), dst, D);
        }
        sgagent::store_row(tile.data() + r * W + (H + Hkv) * D, v.data_ptr<T>() + t * Hkv * D, Hkv * D);
      }
    }
  });
}

}  // namespace

namespace sgagent::ops {

// qkv [T, (H + 2 * Hkv) * D] any strides; cos, sin [T, D] in qkv's dtype (each row's position already looked up)
std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv(const at::Tensor& qkv, const at::Tensor& cos,
                                                        const at::Tensor& sin, int64_t H, int64_t Hkv) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 2, "rope_qkv: qkv must be a CPU [T, (H + 2 Hkv) D] tensor");
  const int64_t T = qkv.size(0), heads = H + 2 * Hkv;
  TORCH_CHECK(H > 0 && Hkv > 0 && qkv.size(1) % heads == 0, "rope_qkv: qkv's width is not (H + 2 Hkv) * D");
  const int64_t D = qkv.size(1) / heads;
  TORCH_CHECK(D % 2 == 0, "rope_qkv: odd head size");
  TORCH_CHECK(cos.sizes() == at::IntArrayRef({T, D}) && sin.sizes() == cos.sizes() && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type(),
              "rope_qkv: cos and sin must be contiguous [T, D] in qkv's dtype");
  auto q = at::empty({T, H, D}, qkv.options());
  auto k = at::empty({T, Hkv, D}, qkv.options());
  auto v = at::empty({T, Hkv, D}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_qkv",
                                  [&] { rope_impl<scalar_t>(qkv, cos, sin, H, Hkv, q, k, v); });
  return {q, k, v};
}

}  // namespace sgagent::ops

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("rope_qkv(Tensor qkv, Tensor cos, Tensor sin, int H, int Hkv) -> (Tensor, Tensor, Tensor)");
  m.impl("rope_qkv", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::rope_qkv));
}
