// Attention for a few query rows per sequence, reading K/V from the paged pool in place; and the K/V store.
//
// The plain-torch path gathers every sequence's pages into a padded copy before SDPA: on a CPU decode step
// that copy (written once, read once) costs about as much as the attention itself. Here each task walks its
// sequence's page table and reads the pool where it lies (PagedGeneric); bf16 pools with 16-key pages go to
// attention_avx512.h where the CPU has AVX512-BF16. paged_attention_grouped also takes prefixes that several
// sequences share (radix-tree branches): each is read once for all its members' rows (paged_tasks.h).
// Built on first use, with the other csrc/ ops, by sgagent/engine/cpu_ops.py (torch's extension loader, -march=native).
//
// Registered as torch.ops.sgagent_cpu.* (no Python binding module: the op library is all that is loaded).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention_avx512.h"
#include "cpu_common.h"
#include "ops.h"
#include "paged_tasks.h"

namespace {

using sgagent::widen;

// The kernel of paged_tasks.h's run_paged for any dtype, page size and head size.
//
// A task is a sequence (or a block of its rows), all heads together: a page of the pool is one contiguous
// [page_size, H, D] block, so reading it whole streams memory where a per-head walk would hop between rows.
// Softmax is online (running max and sum per row), so each page's keys and values are read once. The head size
// is a template parameter for the common sizes (the compiler then keeps a row's accumulators in registers);
// kDyn serves the rest.
constexpr int kDyn = 0, kMaxDyn = 256;

template <typename T, int DT>
struct PagedGeneric {
  using Element = T;
  const T* kp;
  const T* vp;
  int64_t H, ps;
  int D;
  float scale;

  struct State : sgagent::SoftmaxRows {
    std::vector<float> qf, kf, vf, s;  // the scaled query, a page's keys and values widened (bf16/fp16), its scores
  };

  PagedGeneric(const at::Tensor& kc, const at::Tensor& vc, int64_t page_size, double sc)
      : kp(kc.data_ptr<T>()), vp(vc.data_ptr<T>()), H(kc.size(1)), ps(page_size),
        D(DT == kDyn ? static_cast<int>(kc.size(2)) : DT), scale(static_cast<float>(sc)) {}

  void begin(State& st, int64_t rows) const {
    const int64_t HR = H * rows, block = ps * H * D;
    st.reset(H, rows, D);
    st.qf.resize(HR * D);
    if constexpr (!std::is_same_v<T, float>) {  // float32 pages are read in place (attend)
      st.kf.resize(block);
      st.vf.resize(block);
    }
    st.s.resize(HR * ps);
  }

  void query(State& st, int64_t h, int64_t i, const T* src, int64_t qsd) const {
    float* dst = st.qf.data() + (h * st.rows + i) * D;
    for (int d = 0; d < D; ++d) dst[d] = widen(src[d * qsd]) * scale;
  }

  void attend(State& st, const int32_t* l, const int64_t* pg) const {
    const int64_t R = st.rows, block = ps * H * D;
    const int64_t L = *std::max_element(l, l + R);
    for (int64_t p = 0; p * ps < L; ++p) {
      const int64_t first = p * ps, cnt = std::min(ps, L - first);
      const int64_t off = pg[p] * block;
      if ((p + 1) * ps < L) {  // the pool is far larger than any cache: start fetching the next page now
        const char* nk = reinterpret_cast<const char*>(kp + pg[p + 1] * block);
        const char* nv = reinterpret_cast<const char*>(vp + pg[p + 1] * block);
        for (int64_t b = 0; b < block * static_cast<int64_t>(sizeof(T)); b += 64) {
          __builtin_prefetch(nk + b);
          __builtin_prefetch(nv + b);
        }
      }
      // float32 pools are read in place; other dtypes are widened a page at a time
      const float* kpage;
      const float* vpage;
      if constexpr (std::is_same_v<T, float>) {
        kpage = kp + off, vpage = vp + off;
      } else {
        sgagent::widen_row(kp + off, st.kf.data(), cnt * H * D);
        sgagent::widen_row(vp + off, st.vf.data(), cnt * H * D);
        kpage = st.kf.data(), vpage = st.vf.data();
      }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = 0; r < R; ++r) {
          const int64_t hr = h * R + r, stop = std::min<int64_t>(cnt, l[r] - first);
          if (stop <= 0) continue;
          float* sr = st.s.data() + hr * ps;
          const float* __restrict qr = st.qf.data() + hr * D;
          float mx = st.m[hr];
          for (int64_t o = 0; o < stop; ++o) {
            const float* __restrict k = kpage + (o * H + h) * D;
            float d = 0.f;
#pragma omp simd reduction(+ : d)
            for (int i = 0; i < D; ++i) d += qr[i] * k[i];
            sr[o] = d;
            mx = std::max(mx, d);
          }
          const float rescale = std::exp(st.m[hr] - mx);  // exp(-inf) = 0 on the first page
          float part = 0.f;
#pragma omp simd reduction(+ : part)
          for (int64_t o = 0; o < stop; ++o) part += (sr[o] = sgagent::fast_exp(sr[o] - mx));
          st.sum[hr] = st.sum[hr] * rescale + part;
          st.m[hr] = mx;
          // acc = acc * rescale + sum_o w[o] v[o]: the D-wide row stays in registers across the page
          float a[DT == kDyn ? kMaxDyn : DT];
          const float* __restrict prev = st.acc.data() + hr * D;
#pragma omp simd
          for (int i = 0; i < D; ++i) a[i] = prev[i] * rescale;
          for (int64_t o = 0; o < stop; ++o) {
            const float w = sr[o];
            const float* __restrict v = vpage + (o * H + h) * D;
#pragma omp simd
            for (int i = 0; i < D; ++i) a[i] += w * v[i];
          }
          std::memcpy(st.acc.data() + hr * D, a, D * sizeof(float));
        }
    }
  }
};

void check_pages(const at::Tensor& pages, const at::Tensor& limits, int64_t pages_in_pool, int64_t page_size,
                 const char* what) {
  // every index is checked before any memory is read through it (a wrong page table would read out of bounds)
  const int64_t* pg = pages.data_ptr<int64_t>();
  for (int64_t i = 0; i < pages.numel(); ++i)
    TORCH_CHECK(pg[i] >= 0 && pg[i] < pages_in_pool, what, ": page ", pg[i], " is outside the pool");
  const int32_t* lim = limits.data_ptr<int32_t>();
  for (int64_t i = 0; i < limits.numel(); ++i)
    TORCH_CHECK(lim[i] >= 0 && lim[i] <= pages.size(1) * page_size, what, ": limit ", lim[i],
                " is outside its page table");
}

// The checks every call needs; returns how many pages the pool holds.
int64_t check_call(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pages,
                   const at::Tensor& limits, int64_t page_size) {
  TORCH_CHECK(q.device().is_cpu(), "paged_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 3 && v_cache.dim() == 3, "paged_attention: q [N,H,R,D], caches [slots,H,D]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_attention: caches must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_attention: q and caches must share a dtype");
  TORCH_CHECK(k_cache.size(1) == q.size(1) && k_cache.size(2) == q.size(3), "paged_attention: head shapes differ");
  TORCH_CHECK(pages.scalar_type() == at::kLong && pages.is_contiguous() && pages.dim() == 2 && pages.size(0) == q.size(0),
              "paged_attention: pages must be contiguous int64 [N, P]");
  TORCH_CHECK(limits.scalar_type() == at::kInt && limits.is_contiguous() && limits.dim() == 2 &&
                  limits.size(0) == q.size(0) && limits.size(1) == q.size(2),
              "paged_attention: limits must be contiguous int32 [N, R]");
  TORCH_CHECK(q.size(3) <= kMaxDyn, "paged_attention: head size above ", kMaxDyn);
  const int64_t pages_in_pool = k_cache.size(0) / page_size;
  check_pages(pages, limits, pages_in_pool, page_size, "paged_attention");
  return pages_in_pool;
}

// The checked call, run by the kernel this dtype, page size and head size take.
std::tuple<at::Tensor, at::Tensor> attend(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                          const at::Tensor& pages, const at::Tensor& limits,
                                          const sgagent::PrefixGroups& groups, int64_t page_size, double scale) {
  auto out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    // the kernel's type names the element type it reads: bf16 for the AVX512 kernels, whatever was dispatched else
    const auto run = [&](const auto& kernel) {
      using T = typename std::decay_t<decltype(kernel)>::Element;
      sgagent::run_paged<T>(kernel, q, pages, limits, groups, out, lse);
    };
#ifdef SGAGENT_AVX512_BF16_ATTENTION
    if (std::is_same_v<scalar_t, c10::BFloat16> && page_size == sgagent::avx512::kKeys && q.size(3) == 64)
      return run(sgagent::avx512::PagedBF16<64>(k_cache, v_cache, scale));
    if (std::is_same_v<scalar_t, c10::BFloat16> && page_size == sgagent::avx512::kKeys && q.size(3) == 128)
      return run(sgagent::avx512::PagedBF16<128>(k_cache, v_cache, scale));
#endif
    switch (q.size(3)) {
      case 64: return run(PagedGeneric<scalar_t, 64>(k_cache, v_cache, page_size, scale));
      case 128: return run(PagedGeneric<scalar_t, 128>(k_cache, v_cache, page_size, scale));
      default: return run(PagedGeneric<scalar_t, kDyn>(k_cache, v_cache, page_size, scale));
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> paged_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                   const at::Tensor& v_cache, const at::Tensor& pages,
                                                   const at::Tensor& limits, int64_t page_size, double scale) {
  check_call(q, k_cache, v_cache, pages, limits, page_size);
  return attend(q, k_cache, v_cache, pages, limits, sgagent::PrefixGroups{}, page_size, scale);
}

}  // namespace

namespace sgagent::ops {

std::tuple<at::Tensor, at::Tensor> paged_attention_grouped(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pages,
    const at::Tensor& limits, const at::Tensor& group_pages, const at::Tensor& group_keys,
    const at::Tensor& group_of, int64_t page_size, double scale) {
  const int64_t pages_in_pool = check_call(q, k_cache, v_cache, pages, limits, page_size);
  sgagent::PrefixGroups groups;
  if (group_keys.numel() > 0) {
    TORCH_CHECK(group_pages.scalar_type() == at::kLong && group_pages.is_contiguous() && group_pages.dim() == 2,
                "paged_attention: group_pages must be contiguous int64 [G, P]");
    TORCH_CHECK(group_keys.scalar_type() == at::kInt && group_keys.is_contiguous() && group_keys.dim() == 1 &&
                    group_keys.size(0) == group_pages.size(0),
                "paged_attention: group_keys must be contiguous int32 [G]");
    TORCH_CHECK(group_of.scalar_type() == at::kInt && group_of.is_contiguous() && group_of.dim() == 1 &&
                    group_of.size(0) == q.size(0),
                "paged_attention: group_of must be contiguous int32 [N]");
    check_pages(group_pages, group_keys.view({-1, 1}), pages_in_pool, page_size, "paged_attention groups");
    const int32_t* of = group_of.data_ptr<int32_t>();
    for (int64_t n = 0; n < group_of.numel(); ++n)
      TORCH_CHECK(of[n] >= -1 && of[n] < group_keys.size(0), "paged_attention: group ", of[n], " does not exist");
    groups = {group_keys.size(0), group_pages.size(1), group_pages.data_ptr<int64_t>(), group_keys.data_ptr<int32_t>(),
              of};
  }
  return attend(q, k_cache, v_cache, pages, limits, groups, page_size, scale);
}

// k_cache[slots[t]] = k[t] and v_cache[slots[t]] = v[t] for this step's tokens. k and v come straight from the
// projections as strided views; index_copy_ walks such sources element by element through TensorIterator,
// ~110 us a layer at 64 rows, where this loop takes a few.
void store_kv(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots, const at::Tensor& k,
              const at::Tensor& v) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.sizes() == v_cache.sizes(),
              "store_kv: caches must be contiguous and alike");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.size(1) == k_cache.size(1) && k.size(2) == k_cache.size(2),
              "store_kv: k and v must be [T, H, D] like the cache rows");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type(),
              "store_kv: k, v and caches must share a dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == k.size(0),
              "store_kv: slots must be contiguous int64 [T]");
  const int64_t T = k.size(0), H = k.size(1), D = k.size(2), n_slots = k_cache.size(0);
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(sl[t] >= 0 && sl[t] < n_slots, "store_kv: slot ", sl[t], " is outside the pool");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "store_kv", [&] {
    for (const auto& [src, dst] : {std::pair{&k, &k_cache}, std::pair{&v, &v_cache}}) {
      const scalar_t* sp = src->data_ptr<scalar_t>();
      scalar_t* dp = dst->data_ptr<scalar_t>();
      const int64_t st = src->stride(0), sh = src->stride(1), sd = src->stride(2);
      if (sd == 1) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < H; ++h)
            std::memcpy(dp + (sl[t] * H + h) * D, sp + t * st + h * sh, D * sizeof(scalar_t));
      } else {  // a transposed projection output: tokens are its contiguous dimension, so walk them innermost
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d)
            for (int64_t t = 0; t < T; ++t) dp[(sl[t] * H + h) * D + d] = sp[t * st + h * sh + d * sd];
      }
    }
  });
}

}  // namespace sgagent::ops

TORCH_LIBRARY(sgagent_cpu, m) {
  m.def("paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor pages, Tensor limits, int page_size, "
        "float scale) -> (Tensor, Tensor)");
  m.impl("paged_attention", c10::DispatchKey::CPU, TORCH_FN(paged_attention));
  m.def("paged_attention_grouped(Tensor q, Tensor k_cache, Tensor v_cache, Tensor pages, Tensor limits, "
        "Tensor group_pages, Tensor group_keys, Tensor group_of, int page_size, float scale) -> (Tensor, Tensor)");
  m.impl("paged_attention_grouped", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::paged_attention_grouped));
  m.def("store_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor k, Tensor v) -> ()");
  m.impl("store_kv", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::store_kv));
}
