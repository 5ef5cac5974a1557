"""A request's output text: incremental detokenization, exact stop-string cuts, safe stream deltas."""

from __future__ import annotations


class OutputText:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.text = ""
        self.sent = 0
        self._hold = max((len(s) for s in stop), default=1) - 1

    def update(self, output_ids: list[int]) -> bool:
        """Re-decode; True when a stop string appeared (the text is then cut right before it)."""
        text = self.tokenizer.decode(output_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self.stop:
            start = max(0, len(self.text) - self._hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                return True
        self.text = text
        return False

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
