"""Compiling large constraints in a child process that can be killed.

A thread cannot be stopped, and some schemas compile into automata that take minutes and gigabytes. A child
process with a memory cap is killed at its time limit and gives its memory back at once. The child runs
`_compile_child.py` by path, so it imports neither this package nor torch, and never re-imports the
caller's __main__ (as multiprocessing's spawn would).
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from pathlib import Path

_CHILD = Path(__file__).with_name("_compile_child.py")


class CompileWorker:
    def __init__(self, vocabulary, data_limit: int = 6 << 30):
        self._vocab_blob = pickle.dumps(vocabulary)
        self._limit = data_limit

    async def compile(self, regex: str, timeout: float):
        """(index, its size in bytes); TimeoutError past `timeout`, MemoryError past the cap, ValueError for a bad regex."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(_CHILD), str(self._limit),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(pickle.dumps((self._vocab_blob, regex))), timeout)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise MemoryError(f"the compile process died ({proc.returncode}): {err.decode()[-200:]}")
        ok, value = pickle.loads(out)
        if not ok:
            raise ValueError(value)
        return value, len(out)

    def kill(self) -> None:
        """Nothing outlives a call: every child is awaited or killed inside compile()."""
