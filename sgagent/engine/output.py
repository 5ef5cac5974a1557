"""A request's output text: incremental detokenization, exact stop-string cuts, safe stream deltas."""

from __future__ import annotations


class OutputText:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        # the Rust tokenizer itself: transformers' decode wrapper type-checks every id on every call, which
        # cost more than the decoding (re-decoded after each token); without clean-up both give the same text
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode = backend.decode if backend is not None else self._decode_slow
        self.stop = stop
        self.text = ""
        self.sent = 0
        self._hold = max((len(s) for s in stop), default=1) - 1

    def update(self, output_ids: list[int]) -> bool:
        """Re-decode; True when a stop string appeared (the text is then cut right before it)."""
        text = self._decode(output_ids, skip_special_tokens=True)
        if self.stop:
            start = max(0, len(self.text) - self._hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                return True
        self.text = text
        return False

    def _decode_slow(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def delta(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            # an incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
            # text that may be the start of a stop string is not the user's yet
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if self.text[end - k : end] == s[:k]:
                        end -= k
                        break
        piece = self.text[self.sent : end]
        self.sent = end
        return piece
