"""Call-time validation shared by every backend.

:func:`bind` checks the tensors of one call against an attention's implicit and
declared inputs and returns the sizes every backend needs::

    q: [B, H, M, D]    k: [B, HK, N, D]    v: [B, HK, N, DV]    (H divisible by HK)

Wrong Python types and dtypes, missing or unexpected keyword inputs raise
``TypeError``; wrong shapes, sizes and devices raise ``ValueError``. Every message
names the tensor and, for shapes, the dimension.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Mapping, Union

import torch

from .ir import nodes as ir
from .ir.printer import expr_str

SIZE_NAMES = ("B", "H", "HK", "M", "N", "D", "DV")

#: torch dtype of each declared input dtype
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
_QKV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_QKV_DIMS = {"q": "[B, H, M, D]", "k": "[B, HK, N, D]", "v": "[B, HK, N, DV]"}


@dataclass
class Bound:
    """One validated call: the q/k/v tensors, their sizes, the scale and the inputs.

    ``inputs`` holds every declared input: tensors as given, scalar inputs as a
    Python float, or as the 0-d tensor the caller passed (so it can get a gradient).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sizes: dict[str, int]
    scale: float
    inputs: dict[str, Union[torch.Tensor, float]]


def declaration(d: ir.InputDecl) -> str:
    """The input's declared type as written: ``f32[H]``, ``f32``."""
    return d.dtype if d.dims is None else f"{d.dtype}[{', '.join(str(x) for x in d.dims)}]"


def check_input_shape(d: ir.InputDecl, t: torch.Tensor, sizes: Mapping[str, int]) -> None:
    """Raise ValueError unless tensor ``t`` has the shape declared for input ``d``."""
    if t.dim() != len(d.dims):
        raise ValueError(f"{d.name}: expected {len(d.dims)} dim(s) [{', '.join(str(x) for x in d.dims)}] "
                         f"(declared {declaration(d)}), got shape {tuple(t.shape)}")
    for axis, (dim, got) in enumerate(zip(d.dims, t.shape)):
        want = sizes[dim] if isinstance(dim, str) else dim
        if got != want:
            what = f"{dim}={want}" if isinstance(dim, str) else str(want)
            raise ValueError(f"{d.name}: dim {axis} must be {what}, got {got}")


def bind(a: ir.Attention, q, k, v, inputs: Mapping[str, object] | None = None, scale=None, *,
         allow_float64: bool = False, return_lse: bool = False) -> Bound:
    """Validate one call of attention ``a``; see the module docstring for the rules.

    ``allow_float64`` admits float64 q/k/v and float inputs (the reference backend).
    ``return_lse`` is checked against the norm: only softmax norms have a log-sum-exp.
    """
    sizes = _check_qkv(q, k, v, allow_float64)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be True or False, got {return_lse!r}")
    if return_lse and not a.is_softmax:
        raise ValueError(f"return_lse=True needs a softmax norm; attention '{a.name}' uses "
                         f"norm = {a.norm.kind}, which has no row log-sum-exp")
    bound = _check_inputs(a, dict(inputs or {}), sizes, q.device, allow_float64)
    _check_vector_lengths(a, sizes)
    return Bound(q, k, v, sizes, _check_scale(scale, sizes["D"]), bound)


def _check_qkv(q, k, v, allow_float64: bool) -> dict[str, int]:
    allowed = _QKV_DTYPES + ((torch.float64,) if allow_float64 else ())
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {_QKV_DIMS[name]}, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims {_QKV_DIMS[name]}, got shape {tuple(t.shape)}")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values to attend over")
        if t.dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"q, k and v must share a dtype: q is {q.dtype}, {name} is {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"q, k and v must be on one device: q is on {q.device}, {name} is on {t.device}")
    B, H, M, D = q.shape
    HK, N = k.shape[1], k.shape[2]
    for name, t, axis, dim, want in (("k", k, 0, "B", B), ("k", k, 3, "D", D), ("v", v, 0, "B", B),
                                     ("v", v, 1, "HK", HK), ("v", v, 2, "N", N)):
        if t.shape[axis] != want:
            src = "q" if dim in ("B", "D") else "k"
            raise ValueError(f"{name}: dim {axis} must be {dim}={want} (from {src}), got {t.shape[axis]}")
    sizes = {"B": B, "H": H, "HK": HK, "M": M, "N": N, "D": D, "DV": v.shape[3]}
    for name, axis, dim in (("q", 1, "H"), ("k", 1, "HK"), ("q", 3, "D"), ("v", 3, "DV")):
        if sizes[dim] < 1:  # B, M and N may be 0: empty outputs, or rows with no key
            raise ValueError(f"{name}: dim {axis} ({dim}) must be at least 1, got {sizes[dim]} "
                             f"(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")
    if H % HK:
        raise ValueError(f"the query heads H={H} (q dim 1) must be a multiple of the key/value heads "
                         f"HK={HK} (k dim 1)")
    return sizes


def _check_scale(scale, D: int) -> float:
    """The softmax scale as a finite float: default 1/sqrt(D); a number or a 0-d float tensor."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, torch.Tensor) and scale.dim() == 0 and scale.is_floating_point():
        scale = scale.item()
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a number or a 0-d float tensor, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _check_inputs(a: ir.Attention, given: dict, sizes: Mapping[str, int], device: torch.device,
                  allow_float64: bool) -> dict[str, Union[torch.Tensor, float]]:
    # the internal selection of a lowered IR (passes/lower_select.py) is made during the call, not given
    public = [d for d in a.inputs if d.name != ir.SEL]
    declared = {d.name: d for d in public}
    for name in given:
        if name not in declared:
            if not declared:
                raise TypeError(f"unexpected keyword input '{name}': attention '{a.name}' declares no inputs")
            close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else \
                f"; attention '{a.name}' declares {', '.join(sorted(declared))}"
            raise TypeError(f"unexpected keyword input '{name}'{hint}")
    out: dict[str, Union[torch.Tensor, float]] = {}
    for d in public:
        if d.name not in given:
            raise TypeError(f"missing keyword input '{d.name}' (declared {declaration(d)})")
        x = given[d.name]
        out[d.name] = _check_scalar(d, x, device, allow_float64) if d.dims is None \
            else _check_tensor(d, x, sizes, device, allow_float64)
    return out


def _check_scalar(d: ir.InputDecl, x, device: torch.device, allow_float64: bool) -> Union[torch.Tensor, float]:
    if isinstance(x, torch.Tensor):
        if x.dim() != 0:
            raise ValueError(f"{d.name}: a scalar input (declared {d.dtype}) must be a Python number or a "
                             f"0-d tensor, got shape {tuple(x.shape)}")
        ok = (torch.float32, torch.float16, torch.bfloat16) + ((torch.float64,) if allow_float64 else ())
        if x.dtype not in ok:
            raise TypeError(f"{d.name}: expected a floating 0-d tensor (declared {d.dtype}), got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{d.name} is on {x.device} but q is on {device}")
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    raise TypeError(f"{d.name}: expected a Python float or a 0-d tensor (declared {d.dtype}), "
                    f"got {type(x).__name__}")


def _check_tensor(d: ir.InputDecl, x, sizes: Mapping[str, int], device: torch.device,
                  allow_float64: bool) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{d.name}: expected a torch.Tensor (declared {declaration(d)}), got {type(x).__name__}")
    want = TORCH_DTYPES[d.dtype]
    if x.dtype != want and not (allow_float64 and d.is_float and x.dtype == torch.float64):
        raise TypeError(f"{d.name}: expected dtype {want} (declared {declaration(d)}), got {x.dtype}")
    check_input_shape(d, x, sizes)
    if x.device != device:
        raise ValueError(f"{d.name} is on {x.device} but q is on {device}")
    return x


def _check_vector_lengths(a: ir.Attention, sizes: Mapping[str, int]) -> None:
    """Row vectors of an integer length (a row of an input) against a size name (q: D),
    and rope() rows, which must have an even length.

    The IR accepts ``dot(qi[b, i], q)`` with ``qi: bf16[B, M, 64]`` because D is only
    known now; here D must be 64.
    """
    def value(length: str) -> int:
        return int(length) if length.isdigit() else sizes[length]

    def show(length: str) -> str:
        return length if length.isdigit() else f"{length}={sizes[length]}"

    for stage, e in a.exprs():
        for node in ir.walk(e):
            if isinstance(node, ir.Slice) and value(node.x.ty.length) < node.hi:
                raise ValueError(f"{stage} stage, {expr_str(node)}: the slice runs past its row's "
                                 f"{show(node.x.ty.length)} lanes")
            if isinstance(node, ir.Call) and node.fn == "rope" and value(node.ty.length) % 2:
                raise ValueError(f"{stage} stage, {expr_str(node)}: rotate-half RoPE needs an even row length, "
                                 f"got {show(node.ty.length)}")
            joined = isinstance(node, ir.Call) and node.fn == "concat"  # rows of any two lengths
            parts = [] if joined else [(c, expr_str(c)) for c in ir.children(node) if c.ty.is_vec]
            if isinstance(node, ir.Cast) and node.ty.is_vec:
                parts.append((node, f"the row the {stage} stage must give"))
            for (x, xs), (y, ys) in zip(parts, parts[1:]):
                if value(x.ty.length) != value(y.ty.length):
                    raise ValueError(f"{stage} stage, {expr_str(node)}: {xs} has length {show(x.ty.length)} "
                                     f"but {ys} has length {show(y.ty.length)}")
