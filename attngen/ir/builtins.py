"""The language's elementwise float functions of one argument, in one table.

Each entry says everything the compiler needs of the function, so adding one (``erf`` came in
1.1) is one line here and its tests: typing (float or row in, the same out), constant folding
(``fold``: Python's math; None outside the domain, where folding stops and the function runs),
tile classes (``increasing``: a non-decreasing function maps an interval's bounds to the result's),
the reference (``torch``: a function of ``torch`` or ``torch.nn.functional``), the kernels
(``triton``: the call, ``{}`` the argument) and the derivative (``grad``: the argument's adjoint
from ``{g}`` the result's, ``{x}`` the argument and ``{y}`` the result). The consumers read only
this table: check_expr (the names), ir/verify, passes/fold_constants, passes/mask_tiles,
reference/exprs, codegen/emit and codegen/autodiff; tests/test_builtins.py runs every entry through
the kernels and the reference, forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

LN2 = 0.6931471805599453
TWO_OVER_SQRT_PI = 1.1283791670955126


@dataclass(frozen=True)
class Unary:
    name: str
    fold: Callable[[float], Optional[float]]
    increasing: bool
    torch: str
    triton: str
    grad: str


def _positive(f: Callable[[float], float], strict: bool = True) -> Callable[[float], Optional[float]]:
    return lambda x: f(x) if (x > 0 if strict else x >= 0) else None


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


UNARY: dict[str, Unary] = {u.name: u for u in (
    Unary("exp", math.exp, True, "exp", "tl.exp({})", "{g} * {y}"),
    Unary("exp2", lambda x: 2.0 ** x, True, "exp2", "tl.exp2({})", f"{{g}} * {{y}} * {LN2!r}"),
    Unary("log", _positive(math.log), True, "log", "tl.log({})", "{g} / {x}"),
    Unary("log2", _positive(math.log2), True, "log2", "tl.log2({})", f"{{g}} / ({{x}} * {LN2!r})"),
    Unary("sqrt", _positive(math.sqrt, strict=False), True, "sqrt", "tl.sqrt({})", "{g} * 0.5 / {y}"),
    Unary("rsqrt", _positive(lambda x: 1 / math.sqrt(x)), False, "rsqrt", "tl.rsqrt({})",
          "{g} * -0.5 * {y} * {y} * {y}"),
    # tanh and sigmoid: the runtime's helpers (an inline-PTX tanh on the GPU where the dtype allows)
    Unary("tanh", math.tanh, True, "tanh", "_tanh({}, DOT_DTYPE)", "{g} * (1.0 - {y} * {y})"),
    Unary("sigmoid", _sigmoid, True, "sigmoid", "_sigmoid({}, DOT_DTYPE)", "{g} * {y} * (1.0 - {y})"),
    Unary("softplus", lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0), True, "F.softplus", "_softplus({})",
          "{g} * tl.sigmoid({x})"),
    Unary("sin", math.sin, False, "sin", "tl.sin({})", "{g} * tl.cos({x})"),
    Unary("cos", math.cos, False, "cos", "tl.cos({})", "-{g} * tl.sin({x})"),
    Unary("erf", math.erf, True, "erf", "tl.math.erf({})", f"{{g}} * {TWO_OVER_SQRT_PI!r} * tl.exp(-{{x}} * {{x}})"),
)}
