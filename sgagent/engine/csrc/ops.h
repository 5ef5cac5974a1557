// The ops one C++ file calls in another's: declared here so that decode_layers.cpp runs a whole step's layers
// without going back to Python between them. Each is also registered as torch.ops.sgagent_cpu.<name>.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace sgagent::ops {

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& packed, int64_t qtype, int64_t N, int64_t K,
                        bool allow_fast);
// y [M, N] = x [M, K] @ W^T for contiguous float32 x and y, W in quant_linear's tiles; fast: this CPU's widest
// vectors, else the portable loop (the same bits)
void quant_linear_fp32(const float* x, int64_t M, const uint8_t* packed, int64_t qtype, int64_t N, int64_t K,
                       float* y, bool fast);
// whether quant_linear_fp32's fast path is AVX-512's, as fast as MKL at many rows (AVX2's runs at half its speed)
bool quant_linear_fp32_wide();
std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv(const at::Tensor& qkv, const at::Tensor& cos,
                                                        const at::Tensor& sin, int64_t H, int64_t Hkv);
void store_kv(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots, const at::Tensor& k,
              const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor> paged_attention_grouped(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pages,
    const at::Tensor& limits, const at::Tensor& group_pages, const at::Tensor& group_keys,
    const at::Tensor& group_of, int64_t page_size, double scale);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                                                double eps);
at::Tensor silu_mul(const at::Tensor& gate_up);

}  // namespace sgagent::ops
