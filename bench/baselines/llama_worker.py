"""The llama.cpp side of LlamaCppBackend: a child process that holds one `llama_cpp.Llama` and evaluates tokens.

Run by path (`python llama_worker.py GGUF N_CTX THREADS`), so that neither torch nor sgagent is imported here:
llama.cpp's thread pool then has the process to itself instead of competing with torch's OpenMP team, which is
what made the in-process baseline slow. Requests are pickled tuples on stdin; each reply is a pickled header
followed, where the request produces logits, by the next-token logits as raw float32 bytes.
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
from llama_cpp import Llama


def serve(path: str, n_ctx: int, threads: int) -> None:
    # the protocol gets its own descriptor; whatever the C library prints to fd 1 goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def reply(header, logits: bool) -> None:
        pickle.dump(header, out)
        if logits:
            raw = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            out.write(raw.astype(np.float32, copy=False).tobytes())
        out.flush()

    reply({"n_vocab": n_vocab, "n_ctx": llm.n_ctx()}, False)
    while True:
        try:
            op, *args = pickle.load(inp)
        except EOFError:
            break
        if op == "feed":  # hold `ids`, reusing the common prefix of what is held; at least one token is evaluated
            (ids,) = args
            have = llm.input_ids[: llm.n_tokens]
            keep = 0
            for a, b in zip(have, ids):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(ids) - 1)
            llm.n_tokens = keep
            llm.eval(ids[keep:])
            reply(keep, True)
        elif op == "eval":  # append tokens after the first `at` held ones
            at, ids = args
            llm.n_tokens = at
            llm.eval(ids)
            reply(llm.n_tokens, True)
        elif op == "reset":
            llm.n_tokens = 0
            reply(0, False)
        elif op == "close":
            break
    llm.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
