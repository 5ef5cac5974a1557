from .compiler import ConstraintCompiler, SchemaViolationError
from .fsm import ConstraintState, apply_masks
from .grammar import GrammarState

__all__ = ["ConstraintCompiler", "ConstraintState", "GrammarState", "SchemaViolationError", "apply_masks"]
