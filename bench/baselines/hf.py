"""TransformersBackend: every request is one `model.generate` call (or one forward for a select's choices)."""

from __future__ import annotations

import torch

from sgagent.engine.constrained.fsm import apply_masks

from .base import SerialBackend


def load_transformers_model(engine, dtype=None):
    """The transformers model on the engine's weights: its GGUF file (dequantized by transformers) or folder,
    in the engine's own precision unless told otherwise (a like-for-like baseline)."""
    from transformers import AutoModelForCausalLM

    path, dtype = engine._src.path, dtype or engine.runner.dtype
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(engine.runner.device).eval()


class _ConstraintMask:
    """A logits processor walking the same FSM the engine uses, one token per step (no jump-forward)."""

    def __init__(self, state, prompt_len: int):
        self.state, self.prompt_len = state, prompt_len

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_len:
            self.state.advance(int(input_ids[0, -1]), jump=False, room=0)
        apply_masks(scores, [self.state])
        return scores


class TransformersBackend(SerialBackend):
    name = "transformers"

    def __init__(self, engine, model=None):
        super().__init__(engine)
        self.model = model if model is not None else load_transformers_model(engine)

    def _generate(self, ids, params, constraint):
        from transformers import GenerationConfig, LogitsProcessorList

        cfg = GenerationConfig(max_new_tokens=params.max_tokens, eos_token_id=sorted(self.eos_ids | set(params.stop_token_ids)),
                               pad_token_id=self.tokenizer.pad_token_id or 0, do_sample=not params.greedy)
        if not params.greedy:
            cfg.temperature, cfg.top_p = params.temperature, params.top_p
            cfg.top_k = params.top_k or None
            cfg.min_p = params.min_p or None
        if params.ignore_eos:
            cfg.min_new_tokens = params.max_tokens
        kw = {}
        if params.stop:
            cfg.stop_strings = list(params.stop)
            kw["tokenizer"] = self.tokenizer
        if constraint is not None:
            kw["logits_processor"] = LogitsProcessorList([_ConstraintMask(constraint, len(ids))])
        if params.seed is not None:
            torch.manual_seed(params.seed)
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg, **kw)
        return out[0, len(ids):].tolist(), 0

    def _score(self, base, conts):
        # one batched forward over the choices; the vocabulary projection only where a choice token is predicted
        seqs = [base + c for c in conts]
        width = max(map(len, seqs))
        x = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.inference_mode():
            hidden = self.model.model(input_ids=x, attention_mask=mask).last_hidden_state
            logp = self.model.lm_head(hidden[:, len(base) - 1 : -1]).float().log_softmax(-1)
        return [[logp[i, j, t].item() for j, t in enumerate(c)] for i, c in enumerate(conts)], 0
