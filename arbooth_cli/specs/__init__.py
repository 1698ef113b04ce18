"""Built-in model specs, one module per family; registered through the same hook plugins use."""

from __future__ import annotations

from ..modelspec import RegisterFn
from . import infinity, tiny, toy


def register_builtin_models(register: RegisterFn) -> None:
    infinity.register_models(register)
    tiny.register_models(register)
    toy.register_models(register)
