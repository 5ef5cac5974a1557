"""The llguidance backend: JSON schemas and Lark grammars as a lexer + Earley parser whose masks are computed
on demand, step by step, over the token trie.

Why a second backend: outlines-core builds the whole token-level automaton before the first token (seconds to
minutes and GBs for a large schema, and 80% of ../shared's schemas at all); llguidance compiles the same
schemas in milliseconds (99% of them) and pays per step instead. outlines-core keeps regexes and choices: an
index built once makes each later mask a table lookup, and user regexes are small.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark

from ...errors import ConstraintError
from .schema_forms import close_objects, drop_property_counts
from .vocab import TokenVocab, utf8_prefix

# compact JSON, as the outlines path emits: keys and punctuation are forced (jump-forward)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# what lenient compiling leaves to the validation after generation, by the warning llguidance gives
_UNENFORCED_MARKS = ("Unimplemented keys", "oneOf", "Unknown format", "only supported when")


def llg_tokenizer(tokenizer, eos_ids, vocab_size: int) -> LLTokenizer:
    """llguidance's view of the tokenizer, sized to the model's logits (a padded vocabulary's extra ids are never allowed)."""
    import llguidance.hf

    eos = sorted({*eos_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos or None)


def is_unenforced(message: str) -> bool:
    """Whether llguidance refused a schema only for keywords a lenient compile would leave unchecked."""
    return any(m in message for m in _UNENFORCED_MARKS)


def grammar_for(kind: str, value: str | dict, lenient: bool = False, closed: bool = True) -> str:
    if kind == "json_schema":
        opts = {**JSON_OPTIONS, **({"lenient": True, "coerce_one_of": True} if lenient else {})}
        schema = close_objects(value) if closed else value
        return LLMatcher.grammar_from_json_schema(drop_property_counts(schema) if lenient else schema, overrides=opts)
    if kind == "grammar":
        # Lark as llguidance writes it, or GBNF (llama.cpp's, SGLang's ebnf=) translated to it
        try:
            return LLMatcher.grammar_from_lark(any_to_lark(value))
        except Exception as e:  # the GBNF translator raises plain exceptions on what it cannot read
            raise ValueError(f"not a Lark or GBNF grammar: {e}") from e
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    raise ConstraintError(f"no llguidance grammar for {kind!r}")


class CompiledGrammar:
    """A checked grammar, shared by every request that asks for it; each request walks its own copy."""

    def __init__(self, kind: str, key: str, template: LLMatcher, vocab: TokenVocab, unenforced: list[str]):
        self.kind = kind
        self.regex = key  # the cache key, as CompiledConstraint names it
        self.template = template
        self.vocab = vocab
        self.unenforced = unenforced  # llguidance's warnings: keywords only the validation after generation checks
        self.nbytes = len(key)

    def matcher(self) -> LLMatcher:
        return self.template.deep_copy()

    def accepts(self, tokens: list[int]) -> bool:
        m = self.matcher()
        return m.consume_tokens(tokens) and m.is_accepting()


def compile_grammar(tokenizer: LLTokenizer, kind: str, key: str, grammar: str, vocab: TokenVocab,
                    lenient: bool) -> CompiledGrammar:
    """Builds the matcher (drops the GIL; bounded by llguidance's own fuel limits); ValueError with its reason."""
    m = LLMatcher(tokenizer, grammar, log_level=0)
    if m.is_error():
        raise ValueError(m.get_error().split("\n")[0])
    warnings = m.get_grammar_warnings() if lenient else []
    return CompiledGrammar(kind, key, m, vocab, warnings)


class GrammarState:
    """One request's walk through a CompiledGrammar; the same interface as fsm.ConstraintState."""

    def __init__(self, compiled: CompiledGrammar, finish: Callable):
        self.c = compiled
        self.finish = finish
        self.m = compiled.matcher()

    def write_mask(self, row: torch.Tensor) -> None:
        self.m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())

    def _forced(self, room: int) -> list[int]:
        toks = self.m.compute_ff_tokens()[:room]
        if toks and not self.m.consume_tokens(toks):
            raise ConstraintError(f"the grammar refused its own forced tokens: {self.m.get_error()[:200]}")
        return toks

    def start(self, room: int) -> list[int]:
        """Tokens forced before anything is sampled (e.g. a JSON object's opening and first key)."""
        text = utf8_prefix(self.m.compute_ff_bytes())
        toks = self.c.vocab.encode(text) if text else []
        if toks and len(toks) <= room and self.m.validate_tokens(toks) == len(toks) and self.m.consume_tokens(toks):
            return toks
        return self._forced(room)

    def advance(self, token: int, jump: bool, room: int) -> list[int]:
        """As ConstraintState.advance: the forced text is re-tokenized together with the sampled token where
        the grammar takes that, so the model sees its tokenizer's own split (llguidance's fast-forward tokens
        stop short of a boundary that could still merge); else the sampled token then llguidance's ones."""
        if not self.m.consume_token(token):
            # the mask allowed it, so this is llguidance's own limit (fuel, items) being hit mid-generation
            raise ConstraintError(f"the grammar cannot continue: {self.m.get_error()[:200]}")
        if not jump:
            return [token]
        text = utf8_prefix(self.m.compute_ff_bytes())
        if text:
            vocab = self.c.vocab
            last = vocab.token_bytes.get(token, b"")
            candidates = []
            try:
                candidates.append((True, vocab.encode(last.decode("utf-8") + text)))
            except UnicodeDecodeError:
                pass  # the sampled token ends inside a character: keep it
            candidates.append((False, vocab.encode(text)))
            for replace, toks in candidates:
                tail = toks if replace else [token] + toks
                if not toks or len(tail) - 1 > room:
                    continue
                self.m.rollback(1)
                if self.m.validate_tokens(tail) == len(tail) and self.m.consume_tokens(tail):
                    return tail
                self.m.consume_token(token)
        return [token] + self._forced(room)

    def is_done(self) -> bool:
        return self.m.is_stopped()

    def is_complete(self) -> bool:
        return self.m.is_accepting()
