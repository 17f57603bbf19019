"""Name -> function registries for the choices of the objective (tunix `algo_core` pattern)."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A named table of functions; `register(name)` is a decorator, `get(name)` looks one up."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._table[name] = fn
            return fn
        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._table:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: "
                           + ", ".join(sorted(self._table)))
        return self._table[name]

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._table))


POLICY_LOSSES = Registry("policy loss")
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
TEMPERINGS = Registry("tempering function")

register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get
register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
get_advantage_estimator = ADVANTAGE_ESTIMATORS.get
register_tempering = TEMPERINGS.register
get_tempering = TEMPERINGS.get
