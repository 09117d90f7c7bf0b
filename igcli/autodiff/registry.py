"""Op type -> gradient rule. Rules live in the rules_*.py modules and register themselves here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from igcli.autodiff.builder import NodeGrad

Rule = Callable[[NodeGrad], Sequence[str | None]]

RULES: dict[str, Rule] = {}

# Ops whose outputs carry no gradient even when they depend on the input: shapes, indices,
# comparisons and step functions (derivative zero almost everywhere).
ZERO_GRADIENT = {
    "Shape", "Size", "ConstantOfShape", "NonZero", "ArgMax", "ArgMin", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    "Floor", "Ceil", "Round", "Sign", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "Multinomial", "Hardmax",
}  # fmt: skip


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a function as the gradient rule of one or more op types."""

    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"two gradient rules for {op_type}")
            RULES[op_type] = fn
        return fn

    return register


class NoGradient(NotImplementedError):
    """Raised by a rule for a node configuration it cannot differentiate (says why)."""
