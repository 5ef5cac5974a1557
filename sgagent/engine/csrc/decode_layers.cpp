// A CPU decode step's decoder layers in one call: the same ops, in the same order, that model/llama.py calls one
// by one (so the same values), without returning to Python between them. Any dtype the ops take; projections by
// GGUF blocks or dense weights, with or without biases; models with q/k norms stay on the Python loop.
//
// Why: a decode step calls ~10 ops a layer plus the views between them; from Python each costs microseconds of
// interpreter, binding and dispatcher work while the second core waits at the next parallel region. That was
// ~5 of a 14.6 ms single-row step (perf: libpython and torch's bindings 18% of both cores' samples, libgomp's
// spinning 29%).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops.h"

namespace {

// per layer, in weights: the fused qkv, o, fused gate_up and down projections, each either its GGUF tiles
// (quantized.py's PackedWeight.tiles, its ggml type in qtypes) or its dense [N, K] weight (qtype 0); in biases
// the same four, an empty tensor where there is none; in norms: the post-attention norm's weight, then the norm
// after the MLP (the next layer's input norm, the final norm after the last layer).
constexpr int64_t kWeights = 4, kNorms = 2;

// x @ W^T (+ bias) as model/llama.py's multiply and project compute it, so the values are the same: GGUF tiles
// through quant_linear; dense up to small_rows rows as W @ x^T (a transposed view; mv for one row), else linear.
// block_rows > 0 (a batch-invariant step, model/invariance.py's padded_project): dense always as W @ x^T over
// blocks of exactly block_rows rows, the last one padded with zeros.
at::Tensor project(const at::Tensor& x, const at::Tensor& w, int64_t qtype, const at::Tensor& bias, int64_t N,
                   int64_t K, int64_t small_rows, int64_t block_rows) {
  const bool has_bias = bias.numel() > 0;
  at::Tensor y;
  if (qtype != 0) {
    y = sgagent::ops::quant_linear(x, w, qtype, N, K, true);
  } else if (block_rows > 0) {
    const int64_t n = x.size(0), extra = (block_rows - n % block_rows) % block_rows;
    // row-major always: oneDNN's bf16 kernel reduces a column-major x otherwise (as padded_project says)
    const at::Tensor xp = extra == 0 ? x.contiguous() : at::cat({x, at::zeros({extra, x.size(1)}, x.options())});
    std::vector<at::Tensor> blocks;
    for (const at::Tensor& block : xp.split(block_rows)) blocks.push_back(at::mm(w, block.t()));
    y = at::cat(blocks, 1).t().narrow(0, 0, n);
  } else if (x.size(0) > small_rows) {
    return has_bias ? at::linear(x, w, bias) : at::linear(x, w);
  } else if (x.size(0) == 1) {
    y = at::mv(w, x.select(0, 0)).unsqueeze(0);
  } else {
    y = at::mm(w, x.t()).t();
  }
  return has_bias ? y + bias : y;
}

std::tuple<at::Tensor, at::Tensor> decode_layers(
    const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& cos, const at::Tensor& sin,
    at::TensorList weights, at::IntArrayRef qtypes, at::TensorList biases, at::TensorList norms, double eps,
    int64_t H, int64_t Hkv, int64_t intermediate, int64_t small_rows, int64_t block_rows, const at::Tensor& k_caches,
    const at::Tensor& v_caches, const at::Tensor& slots, const at::Tensor& pages, const at::Tensor& limits,
    const at::Tensor& group_pages, const at::Tensor& group_keys, const at::Tensor& group_of, int64_t page_size,
    double scale) {
  const int64_t L = static_cast<int64_t>(weights.size()) / kWeights;
  TORCH_CHECK(L > 0 && static_cast<int64_t>(weights.size()) == L * kWeights &&
                  static_cast<int64_t>(qtypes.size()) == L * kWeights &&
                  static_cast<int64_t>(biases.size()) == L * kWeights &&
                  static_cast<int64_t>(norms.size()) == L * kNorms,
              "decode_layers: 4 weights, 4 qtypes, 4 biases and 2 norms a layer");
  TORCH_CHECK(k_caches.dim() == 4 && k_caches.size(0) == L && v_caches.sizes() == k_caches.sizes(),
              "decode_layers: caches must be [layers, slots, Hkv, D]");
  TORCH_CHECK(x_in.dim() == 2 && h_in.sizes() == x_in.sizes(), "decode_layers: x and h must be [B, hidden]");
  const int64_t B = x_in.size(0), hidden = x_in.size(1), D = k_caches.size(3);
  TORCH_CHECK(H % Hkv == 0 && k_caches.size(2) == Hkv, "decode_layers: heads do not fit the caches");
  at::Tensor x = x_in, h = h_in;
  for (int64_t l = 0; l < L; ++l) {
    const auto proj = [&](int64_t i, const at::Tensor& in, int64_t N, int64_t K) {
      const int64_t at = l * kWeights + i;
      return project(in, weights[at], qtypes[at], biases[at], N, K, small_rows, block_rows);
    };
    auto [q, k, v] = sgagent::ops::rope_qkv(proj(0, h, (H + 2 * Hkv) * D, hidden), cos, sin, H, Hkv);
    at::Tensor kc = k_caches.select(0, l), vc = v_caches.select(0, l);
    sgagent::ops::store_kv(kc, vc, slots, k, v);
    // a decode's query heads grouped under their K/V head: [B, H, D] read as [B, Hkv, H / Hkv, D]
    const at::Tensor qg = q.view({B, Hkv, H / Hkv, D});
    // no groups (group_keys empty) is the plain paged attention
    const at::Tensor o = std::get<0>(sgagent::ops::paged_attention_grouped(
        qg, kc, vc, pages, limits, group_pages, group_keys, group_of, page_size, scale));
    std::tie(x, h) = sgagent::ops::add_rms_norm(x, proj(1, o.view({B, H * D}), hidden, H * D), norms[l * kNorms], eps);
    const at::Tensor act = sgagent::ops::silu_mul(proj(2, h, 2 * intermediate, hidden));
    std::tie(x, h) = sgagent::ops::add_rms_norm(x, proj(3, act, hidden, intermediate), norms[l * kNorms + 1], eps);
  }
  return {x, h};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("decode_layers(Tensor x, Tensor h, Tensor cos, Tensor sin, Tensor[] weights, int[] qtypes, Tensor[] biases, "
        "Tensor[] norms, float eps, int H, int Hkv, int intermediate, int small_rows, int block_rows, Tensor k_caches, "
        "Tensor v_caches, Tensor slots, Tensor pages, Tensor limits, Tensor group_pages, Tensor group_keys, "
        "Tensor group_of, int page_size, float scale) -> (Tensor, Tensor)");
  m.impl("decode_layers", c10::DispatchKey::CPU, TORCH_FN(decode_layers));
}
