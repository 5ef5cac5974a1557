"""The model's vocabulary as outlines-core needs it: every ordinary token mapped to its real bytes."""

from __future__ import annotations

from functools import lru_cache

from outlines_core import Vocabulary


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table, which byte-level BPE token strings are written in
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = repr(getattr(backend, "decoder", "")) if backend is not None else ""
    return "ByteLevel" in dec


def utf8_prefix(b: bytes) -> str:
    """The longest prefix of b that is whole UTF-8 characters (forced bytes can end inside one)."""
    for cut in range(len(b), max(len(b) - 4, -1), -1):
        try:
            return b[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


class TokenVocab:
    """token id -> bytes for ordinary tokens, the single-byte tokens, and the outlines Vocabulary."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        byte_level = _is_byte_level(tokenizer)
        dec = _byte_decoder()
        self.token_bytes: dict[int, bytes] = {}
        for tok, i in tokenizer.get_vocab().items():
            if i in special:
                continue
            if byte_level:
                try:
                    b = bytes(dec[c] for c in tok)
                except KeyError:
                    b = tok.encode()  # an added non-special token written in plain text
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                b = bytes([int(tok[3:5], 16)])  # SentencePiece byte fallback
            else:
                b = tok.replace("\u2581", " ").encode()
            if b:
                self.token_bytes[i] = b
        self.byte_token: dict[int, int] = {}
        for i, b in self.token_bytes.items():
            if len(b) == 1:
                self.byte_token.setdefault(b[0], i)
        groups: dict[bytes, list[int]] = {}
        for i, b in self.token_bytes.items():
            groups.setdefault(b, []).append(i)
        self.outlines = Vocabulary(self.eos_id, groups)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
