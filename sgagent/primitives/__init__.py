from .concurrency import gather, join
from .program import Program, default_engine, program, run_batch, set_default_engine
from .roles import Message, assistant, system, user
from .state import ProgramState

__all__ = ["Message", "Program", "ProgramState", "assistant", "default_engine", "gather", "join", "program",
           "run_batch", "set_default_engine", "system", "user"]
