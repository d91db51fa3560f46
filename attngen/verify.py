"""Kernels vs reference: run an attention through the generated kernels and the float64 reference
(used by ``attngen verify`` and the test suite).

Inputs are drawn from each spec's declarations: float tensors uniform in [0.5, 1.5)
(positive, so specs may take logs or powers of them), integer tensors as sorted small ids
along their last dim (document-like), bools with probability 0.2.
"""

from __future__ import annotations

import torch

from attngen.ir import nodes as ir
from attngen.reference.api import ReferenceAttention
from attngen.runtime.jit import TritonAttention

_DT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i32": torch.int32, "i64": torch.int64}


def make_inputs(a: ir.Attention, sizes: dict, device, gen: torch.Generator) -> dict:
    out = {}
    for d in a.inputs:
        if d.dims is None:
            out[d.name] = float(torch.rand((), generator=gen)) + 0.5
            continue
        shape = [sizes[x] if isinstance(x, str) else x for x in d.dims]
        if d.dtype == "bool":
            t = torch.rand(shape, generator=gen) < 0.2
        elif d.dtype in ("i32", "i64"):
            t = torch.sort(torch.randint(0, 4, shape, generator=gen), dim=-1).values.to(_DT[d.dtype])
        else:
            t = (torch.rand(shape, generator=gen) + 0.5).to(_DT[d.dtype])
        out[d.name] = t.to(device)
    return out


#: yardstick when the low-precision reference itself overflows (e.g. an fp16 score bias of 1e5):
#: the usual relative tolerance of the dtype
DTYPE_TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 1e-4}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ (inf where x is not finite)."""
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def compare(a: ir.Attention, B=2, H=4, HK=2, M=67, N=67, D=40, DV=24, dtype=torch.float32, device="cpu",
            seed=0, scale=None, common=0.0) -> dict:
    """Relative errors of o and every gradient: kernel vs float64 reference, and the low-precision
    reference vs float64 (the yardstick the kernel's error is judged by). ``scale``: the call's.
    ``common``: q and k share a direction of this length, so a row's scores have a common part that is
    large against their spread (as trained models' keys do)."""
    gen = torch.Generator().manual_seed(seed)
    fn = TritonAttention(a)
    ref = ReferenceAttention(a)
    sizes = dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=DV)
    q = torch.randn(B, H, M, D, generator=gen)
    k = torch.randn(B, HK, N, D, generator=gen)
    if common:
        u = torch.randn(D, generator=torch.Generator().manual_seed(seed + 1))
        q, k = q + common * u / u.norm(), k + common * u / u.norm()
    q, k = q.to(device, dtype), k.to(device, dtype)
    v = torch.randn(B, HK, N, DV, generator=gen).to(device, dtype)
    xs = make_inputs(a, sizes, device, gen)
    names = ["q", "k", "v"] + [n for n, x in xs.items() if isinstance(x, torch.Tensor) and x.is_floating_point()]
    base = {"q": q, "k": k, "v": v, **xs}
    do = torch.randn(B, H, M, DV, generator=gen).to(device, dtype)

    def run(f, cast):
        leaves = {n: cast(base[n]).detach().requires_grad_(True) for n in names}
        args = {**{n: (cast(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
                   for n, x in xs.items()}, **leaves}
        o = f(args.pop("q"), args.pop("k"), args.pop("v"), scale=scale, **args)
        o.backward(cast(do))
        return o.detach(), {n: leaves[n].grad for n in names}

    o_k, g_k = run(fn, lambda t: t)
    o_64, g_64 = run(ref, lambda t: t.double())
    o_lp, g_lp = run(ref, lambda t: t)

    def errs(kernel, lowp, exact):
        yardstick = rel_err(lowp, exact)
        return rel_err(kernel, exact), (yardstick if yardstick != float("inf") else DTYPE_TOL[dtype])

    out = {"o": errs(o_k, o_lp, o_64)}
    for n in names:
        assert g_k[n] is not None, f"no gradient for {n}"
        if g_64[n] is None:  # read only by a selection's by: the reference's autograd never reaches it
            g_64[n] = g_lp[n] = torch.zeros_like(g_k[n])
        out["d" + n] = errs(g_k[n], g_lp[n], g_64[n])
    return out


def assert_close(errs: dict, factor: float = 4.0, floor: float = 1e-5) -> None:
    """Kernel error within ``factor`` x the low-precision reference's error (or under ``floor``);
    a NaN or inf anywhere in the kernel's results fails."""
    bad = {k: v for k, v in errs.items() if not v[0] <= max(factor * v[1], floor)}
    assert not bad, f"kernel error too large (kernel, low-precision reference): {bad}"
