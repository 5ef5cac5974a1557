"""ModelRunner: owns the weights, the KV pool and the attention backend; runs one step off the loop thread."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..log import get_logger
from .attention import make_backend
from .attention.flashinfer_backend import FlashInferAttention  # flashinfer itself is imported only when used
from .config import EngineConfig
from .constrained.fsm import apply_masks
from .cpu_ops import cpu_ops
from .images import VisionCache, split_pseudo
from .kv_pool import KVPool
from .model.invariance import invariant_numerics
from .model.llama import CausalLM
from .model.multimodal import build_encoder, split_checkpoint
from .model.source import ModelSource
from .sampler import sample
from .scheduler import StepPlan

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16). There, oneDNN's bf16 matmuls run
    2.7-4.5x faster than fp32 from 16 rows up (`python -m bench.cpu_projection`); elsewhere they have
    no hardware path."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()


def _top(logprobs: torch.Tensor, ks: list[int]) -> list[list[tuple[int, float]] | None] | None:
    """Each row's ks[i] most likely (token id, logprob), from one topk over the batch at the largest k."""
    k = max(ks)
    if not k:
        return None
    vals, ids = logprobs.topk(k, dim=-1)
    vals, ids = vals.tolist(), ids.tolist()
    return [list(zip(ids[i][:n], vals[i][:n])) if n else None for i, n in enumerate(ks)]


@dataclass
class StepOutput:
    tokens: list[int]  # one per sampling item, in plan order
    logprobs: list[float | None]
    prompt_logprobs: list[list[float]]  # one list per plan item
    top: list[list[tuple[int, float]] | None] | None = None  # per sampling item, when one asked for top_logprobs


class ModelRunner:
    def __init__(self, src: ModelSource, cfg: EngineConfig, model: CausalLM | None = None):
        if cfg.dtype != "auto" and cfg.dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        if cfg.dtype == "auto":
            native = self.device.type == "cuda" or cpu_has_native_bf16()
            self.dtype = torch.bfloat16 if native else torch.float32
        else:
            self.dtype = _DTYPES[cfg.dtype]
        self.config = src.config
        self.cpu_ops = cpu_ops() if cfg.cpu_kernels and self.device.type == "cpu" else None
        if model is None:
            model = CausalLM(src.config, src.hf_config)
            blocks = src.load_block_quantized() if self._use_gguf_blocks(cfg) else {}
            tensors, vision = src.load_tensors(), None
            if src.family is not None:
                tensors, vision = split_checkpoint(tensors)
            model.load(tensors)
            if vision is not None:
                model.encoder = build_encoder(src.vlm_config, vision)  # after load: its names are not the LM's
            model = model.to_device(self.device, self.dtype).eval()
            if blocks:
                n = model.attach_packed(blocks)
                get_logger("sgagent.engine").info("engine.gguf_blocks", matrices=n)
        self.model = model
        encoder = getattr(model, "encoder", None)
        self.vision = VisionCache(encoder, cfg.image_cache_bytes, self.device, self.dtype) if encoder else None
        self.pool = KVPool(src.config, cfg.page_size, cfg.kv_cache_bytes, self.dtype, self.device, cfg.kv_pages)
        self.deterministic = self._can_be_invariant(cfg)
        self.attn = make_backend(cfg.attention_backend, self.pool, self.device, src.config.num_heads, self.dtype,
                                 cfg.shared_prefix_attention, self.cpu_ops, self.deterministic)
        self.graphs = None
        if cfg.cuda_graphs and self.device.type == "cuda" and isinstance(self.attn, FlashInferAttention):
            from .cuda_graphs import DecodeGraphs

            max_context = cfg.max_context or src.config.max_position
            self.graphs = DecodeGraphs(self.model, self.attn, cfg.max_running_requests,
                                       -(-max_context // cfg.page_size) + 1)
            self.graphs.capture_all()

    def _can_be_invariant(self, cfg: EngineConfig) -> bool:
        """Whether this engine's steps are batch-invariant (EngineConfig.deterministic): asked for, and on the
        path that provides it, the CPU with its C++ ops and the torch backend."""
        if not cfg.deterministic:
            return False
        why = None
        if self.device.type != "cpu":
            why = "batch-invariant kernels exist only for the CPU path (flashinfer and cuBLAS pick their split by batch)"
        elif self.cpu_ops is None:
            why = "the C++ ops are off or did not build (cpu_kernels)"
        elif cfg.attention_backend not in ("auto", "torch"):
            why = f"attention_backend={cfg.attention_backend!r}"
        if why:
            get_logger("sgagent.engine").warning("engine.nondeterministic", reason=why)
            return False
        return True

    def _use_gguf_blocks(self, cfg: EngineConfig) -> bool:
        """Multiply by a GGUF's Q4_1/Q8_0 blocks (EngineConfig.gguf_blocks): by default where the ops do it at
        dense speed or better, bf16 steps with AMX and float32 steps with AVX-512; asked for, float32 on AVX2 too."""
        if cfg.gguf_blocks is False or self.cpu_ops is None:
            return False
        if self.dtype == torch.float32:
            return cfg.gguf_blocks is True or self.cpu_ops.quant_linear_fp32_wide()
        return self.dtype == torch.bfloat16 and self.cpu_ops.quant_linear_fast()

    def _argmax_only(self, plan: StepPlan, lp_rows: list[int]) -> bool:
        """Whether all this step needs of the logits is each row's argmax (greedy rows with no constraint and no
        logprobs): then the CPU ops read the lm_head's output once, with no float32 copy of [rows, vocab]."""
        return self.cpu_ops is not None and not lp_rows and all(
            it.req.params.greedy and it.req.constraint is None and not it.req.params.logprobs
            for it in plan.items if it.sample)

    def _embed_with_images(self, plan: StepPlan, ids: torch.Tensor) -> torch.Tensor:
        """The step's input embeddings, image rows taken from the vision encoder's output (vision cache)."""
        vocab = self.config.vocab_size
        mask = ids >= vocab
        at = mask.nonzero()[:, 0]
        tags, rows = split_pseudo(vocab, ids[at])
        wanted = set(tags.tolist())
        known = {t: img for it in plan.items for t, img in it.req.images.items() if t in wanted}
        if len(known) != len(wanted):
            raise ValueError("a step holds image ids of no image its requests carry")
        encoded = self.vision.rows(known)
        x = self.model.model.embed_tokens(ids.masked_fill(mask, 0))
        for tag, out in encoded.items():
            sel = tags == tag
            x[at[sel]] = out[rows[sel]].to(x.dtype)
        return x

    def step(self, plan: StepPlan) -> StepOutput:
        with invariant_numerics(self.deterministic):
            return self._step(plan)

    @torch.inference_mode()
    def _step(self, plan: StepPlan) -> StepOutput:
        b = plan.batch
        if plan.copies:
            self.pool.copy_tokens(plan.copies)
        lp_rows = [r for it in plan.items for r in it.lp_rows]
        rows = torch.tensor(b.logit_rows + lp_rows, dtype=torch.long, device=self.device)
        images = self.vision is not None and max(b.input_ids, default=0) >= self.config.vocab_size
        if self.graphs is not None and not images and self.graphs.fits(b):
            logits = self.graphs.run(b)[rows]  # a decode's row i is sequence i
        else:
            ids = torch.tensor(b.input_ids, dtype=torch.long, device=self.device)
            pos = torch.tensor(b.positions, dtype=torch.long, device=self.device)
            embeds = self._embed_with_images(plan, ids) if images else None
            hidden = self.model(ids, pos, self.attn, self.attn.prepare(b, self.device), self.cpu_ops, embeds)
            if len(rows) and self._argmax_only(plan, lp_rows):
                tokens = self.cpu_ops.argmax_rows(self.model.scores(hidden[rows], self.cpu_ops)).tolist()
                return StepOutput(tokens, [None] * len(tokens), [[] for _ in plan.items])
            logits = self.model.logits(hidden[rows], self.cpu_ops) if len(rows) else None
        if logits is None:
            return StepOutput([], [], [[] for _ in plan.items])
        n = len(b.logit_rows)
        sampling = [it.req for it in plan.items if it.sample]
        tokens, chosen, top = [], [], None
        if n:
            raw = logits[:n]
            masked = raw
            if any(r.constraint is not None for r in sampling):
                masked = raw.clone()
                apply_masks(masked, [r.constraint for r in sampling])
            tok = sample(masked, [r.params for r in sampling], [r.generator for r in sampling])
            tokens = tok.tolist()
            if any(r.params.logprobs for r in sampling):
                # the model's distribution, before constraints mask it and sampling reshapes it
                full = raw.log_softmax(-1)
                lp = full.gather(1, tok[:, None])[:, 0].tolist()
                chosen = [lp[i] if r.params.logprobs else None for i, r in enumerate(sampling)]
                top = _top(full, [r.params.top_logprobs for r in sampling])
            else:
                chosen = [None] * n
        prompt_lps = []
        if lp_rows:
            targets = torch.tensor([t for it in plan.items for t in it.lp_targets], device=self.device)
            vals = logits[n:].log_softmax(-1).gather(1, targets[:, None])[:, 0].tolist()
            k = 0
            for it in plan.items:
                prompt_lps.append(vals[k : k + len(it.lp_rows)])
                k += len(it.lp_rows)
        else:
            prompt_lps = [[] for _ in plan.items]
        return StepOutput(tokens, chosen, prompt_lps, top)
