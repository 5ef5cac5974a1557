"""The engine's C++ ops for CPU steps (csrc/: paged attention and K/V stores, a layer's element-wise work,
projections by GGUF blocks), built on first use.

torch's extension loader compiles them once per machine (about 25 s with g++) into its cache
(~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR) and later processes just load it. Without a C++
compiler the engine keeps its plain-torch paths (gather-then-SDPA, torch's RMSNorm): same results, slower steps.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path

import torch

from ..log import get_logger

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("paged_attention.cpp", "rms_norm.cpp", "activation.cpp", "rope.cpp",
                                    "logits.cpp", "quant_linear.cpp", "quant_linear_fp32.cpp",
                                    "decode_layers.cpp")]


def _cpu_tag() -> str:
    """A short hash of this CPU's feature flags: the build uses -march=native, so a cache shared between
    machines (a network home) must not hand one CPU's binary to another."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = os.uname().machine
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _clear_stale_lock(lock: Path, max_age_s: float = 600.0) -> None:
    """torch's loader waits for as long as its build lock exists; a build killed midway (a timeout, a crash)
    leaves it behind, and every later engine would hang at start. A build takes ~25 s, so an old lock is stale."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except FileNotFoundError:
        pass


@functools.cache
def cpu_ops():
    """The op namespace torch.ops.sgagent_cpu, or None where it cannot be built here (the reason is logged):

    - paged_attention(q [N, Hkv, R, D], k_cache, v_cache [slots, Hkv, D], pages [N, P] int64, limits [N, R]
      int32, page_size, scale) -> (out [N, Hkv, R, D], lse [N, Hkv, R] float32): query row r of sequence n
      attends to the first limits[n, r] keys of its pages;
    - store_kv(k_cache, v_cache, slots [T] int64, k, v [T, Hkv, D]): writes this step's K/V rows to their slots;
    - rms_norm(x [T, H], weight [H], eps) -> [T, H]: in transformers' rounding order for half precision;
      add_rms_norm(x, delta, weight, eps) -> (x + delta, rms_norm(x + delta));
    - silu_mul(gate_up [T, 2I]) -> silu(gate) * up [T, I];
    - rope_qkv(qkv [T, (H + 2 Hkv) D], cos, sin [T, D], H, Hkv) -> q [T, H, D], k, v [T, Hkv, D], q and k rotated;
    - rows_to_float(y [T, V]) -> float32 [T, V], contiguous; argmax_rows(y) -> int64 [T], torch.max's tie rule;
    - quant_linear(x [T, K] bf16 or float32, tiles, qtype, N, K) -> x @ W^T [T, N] for W in GGUF Q4_1/Q8_0 blocks
      packed by model/quantized.py (bf16: AMX where quant_linear_fast(), else a portable loop; float32: AVX-512
      where quant_linear_fp32_wide(), else AVX2; allow_fast=False: the portable loop, the same float32 bits);
    - decode_layers(...) -> (x, h): a step of decodes through every decoder layer, the ops above in the model's
      order (csrc/decode_layers.cpp; model/llama.py's CausalLM._native_decode supplies its arguments).
    Their inputs may be strided (a decode step's projections come back transposed); outputs are contiguous.
    """
    log = get_logger("sgagent.engine")
    t0 = time.perf_counter()
    try:
        import ninja  # torch's loader drives the build with ninja, which it looks for on PATH

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        from torch.utils.cpp_extension import _get_build_directory, load

        name = f"sgagent_cpu_ops_{_cpu_tag()}"
        _clear_stale_lock(Path(_get_build_directory(name, False)) / "lock")
        load(name=name, sources=[str(p) for p in SOURCES], extra_include_paths=[str(CSRC)],
             # no errno and no FP traps: without both, GCC leaves loops with floor/min/max or libm calls scalar
             extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
             # -fopenmp links libgomp.so.1 by soname: the loader hands back the copy torch already loaded, so
             # the kernel's threads are torch's own team rather than a second one fighting it for the cores
             extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the torch path still works
        log.warning("cpu_ops.unavailable", error=f"{type(e).__name__}: {str(e)[-300:]}")
        return None
    log.info("cpu_ops.ready", seconds=round(time.perf_counter() - t0, 2))
    return torch.ops.sgagent_cpu
