"""The default model as a Hugging Face folder (config.json + float32 safetensors), written from its GGUF by
transformers' own GGUF reader: what vLLM loads (its CPU build does not read this GGUF's Q4_1 blocks).

python -m bench.peers.hf_folder [--model FILE.gguf] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".peers" / "models"


def hf_folder(gguf: str | Path | None = None, out: str | Path | None = None) -> Path:
    """The folder for `gguf` (default: the default model), written once and reused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sgagent.engine.model.source import resolve

    src = Path(resolve(str(gguf) if gguf else None).path)
    folder = Path(out) if out else DEFAULT_OUT / src.stem
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # the GGUF reader has already dequantized every tensor to float32; only its marker refuses to save them
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    print(hf_folder(a.model, a.out))
