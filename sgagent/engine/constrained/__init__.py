from .compiler import ConstraintCompiler, SchemaViolationError
from .fsm import ConstraintState, apply_masks

__all__ = ["ConstraintCompiler", "ConstraintState", "SchemaViolationError", "apply_masks"]
