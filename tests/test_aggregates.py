"""Row aggregates (language 1.1): rowsum, rowmean, rowmax, rowmin and rowcount in the weights and out
stages, in the reference interpreter, against formulas written here in plain float64 torch (the
aggregates below are this file's own, not the interpreter's); and their check-time errors.

Shapes are awkward on purpose: M = 7 queries against N = 11 keys (end-aligned: query row m sits at
i = m + 4), two query heads sharing one key head. A row with no kept key gives o = 0 and every
aggregate 0; the gradient of rowmax/rowmin goes to the smallest j attaining it."""

from __future__ import annotations

import math

import pytest
import torch
from refutil import F64, check, leaf, positions, qkv, ref

import attngen
from attngen.driver import compile_source
from attngen.ir import nodes as ir
from attngen.ir.printer import attention_str

B, H, HK, M, N, D, DV = 2, 2, 1, 7, 11, 5, 3

#: mask spec text -> kept(i, j); "empty" leaves rows m = 0, 1 without keys (i = 4, 5) and rows
#: m = 2, 3 with one and two
MASKS = {
    "none": ("true", lambda i, j: torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool)),
    "causal": ("causal", lambda i, j: j <= i),
    "window": ("window(4)", lambda i, j: (i - j < 4) & (j <= i)),
    "empty": ("j < i - 5", lambda i, j: j < i - 5),
}


# ---- the formulas: plain torch, float64

def inputs(M=M, N=N, seed=0):
    return qkv(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=DV, seed=seed)


def scores(q, k, v):
    """q k^T / sqrt(D) [B, H, M, N] and the value rows per query head [B, H, N, DV]."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), v


def kept_of(mask: str, M=M, N=N) -> torch.Tensor:
    i, j = positions(M, N)
    return MASKS[mask][1](i, j).expand(B, H, M, N)


def agg(kind: str, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The aggregate [B, H, M, 1] of x over the kept keys; 0 over an empty row; max/min take x at
    the smallest j attaining the extreme (so the gradient goes there alone)."""
    x, kept = torch.broadcast_tensors(x, kept)
    n = kept.sum(-1, keepdim=True)
    if kind == "count":
        return n
    zero = torch.zeros((), dtype=x.dtype)
    if kind in ("sum", "mean"):
        total = torch.where(kept, x, zero).sum(-1, keepdim=True)
        return total if kind == "sum" else total.to(F64) / n.clamp(min=1)
    ranked = x.detach().to(F64) * (1 if kind == "max" else -1)
    ranked = torch.where(kept, ranked, -math.inf)
    top = ranked.amax(-1, keepdim=True)
    js = torch.arange(x.shape[-1]).expand(x.shape)
    first = torch.where(kept & (ranked == top), js, x.shape[-1]).amin(-1, keepdim=True)
    return torch.where(n > 0, x.gather(-1, first.clamp(max=x.shape[-1] - 1)), zero)


def softmax(s: torch.Tensor, kept: torch.Tensor, sink=None) -> torch.Tensor:
    e = torch.where(kept, torch.exp(s), 0.0)
    d = e.sum(-1, keepdim=True) + (0.0 if sink is None else math.exp(sink))
    return e / torch.where(d > 0, d, 1.0)


def attend(w: torch.Tensor, kept: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o [B, H, M, DV]: the weighted sum over the kept keys."""
    return torch.where(kept, w, 0.0) @ v


def spec(*body: str) -> str:
    return "attention a {\n" + "\n".join("    " + s for s in body) + "\n}"


def grid_i_j(M=M, N=N):
    i, j = positions(M, N)
    return i.to(F64), j.to(F64)


# ---- each aggregate in weights, under each mask, with gradients for q, k, v and an input

AGG_TEXT = {"sum": "rowsum(w[h] * score * score + j)", "mean": "rowmean(w[h] * score * score + j)",
            "max": "rowmax(w[h] * score * score + j)", "min": "rowmin(w[h] * score * score + j)",
            "count": "rowcount()"}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("kind", AGG_TEXT)
def test_each_aggregate_in_weights(kind, mask):
    src = spec("input w: f32[H]", f"mask = {MASKS[mask][0]}", "norm = none",
               f"weights = w[h] * score - {AGG_TEXT[kind]}")
    q, k, v = inputs()
    w = leaf(H, low=0.5, high=1.5)
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    _, j = grid_i_j()
    wh = w[None, :, None, None]
    a = agg(kind, wh * s * s + j, kept)
    expect = attend(wh * s - a, kept, vv)
    check(ref(src)(q, k, v, w=w), expect, [q, k, v, w])


def test_aggregate_types():
    """Aggregates of integer expressions are integers (rowmean is a float); of floats, floats."""
    a = compile_source(spec("weights = p * (rowsum(j) + rowmax(j - i) + rowmin(m) + rowcount() + rowmean(j) "
                            "+ rowsum(score) + rowmax(p) + rowmin(1.0) + rowmean(score))"))[0]
    got = sorted((e.kind, e.x.ty.kind, e.ty.kind) for e in ir.walk(a.weights) if isinstance(e, ir.Agg))
    assert got == sorted([
        ("sum", "int", "int"), ("max", "int", "int"), ("min", "int", "int"), ("count", "int", "int"),
        ("mean", "int", "float"), ("sum", "float", "float"), ("max", "float", "float"),
        ("min", "float", "float"), ("mean", "float", "float")])


def test_aggregates_print_as_written():
    a = compile_source(spec("norm = none", "weights = (score - rowmean(score)) / max(rowcount(), 1)",
                            "out = o * rowmax(j)"))[0]
    text = attention_str(a)
    assert "rowmean(score)" in text and "rowcount()" in text and "rowmax(j)" in text, text


# ---- integer aggregates: integer arithmetic, and indexing a tensor

@pytest.mark.parametrize("mask", MASKS)
def test_integer_aggregates_keep_integer_arithmetic(mask):
    src = spec(f"mask = {MASKS[mask][0]}",
               "weights = p * (rowsum(j - i) // 4 + rowmax(j) % 3 - rowmin(i - j) + rowsum(j) / 4 + rowmean(j))")
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    i, j = positions(M, N)
    i, j = i.expand(B, H, M, N), j.expand(B, H, M, N)
    total = (torch.div(agg("sum", j - i, kept), 4, rounding_mode="floor") + torch.remainder(agg("max", j, kept), 3)
             - agg("min", i - j, kept))
    assert total.dtype == torch.int64
    factor = total.to(F64) + agg("sum", j, kept).to(F64) / 4 + agg("mean", j, kept)
    check(ref(src)(q, k, v), attend(softmax(s, kept) * factor, kept, vv), [q, k, v])


@pytest.mark.parametrize("mask", ["causal", "window", "empty"])
def test_integer_aggregate_indexes_a_tensor(mask):
    """tab[rowcount() - 1] and tab[rowmax(j)]: an aggregate is an index, and the input gets its gradient
    (an index out of range reads 0)."""
    src = spec("input tab: f32[N]", f"mask = {MASKS[mask][0]}", "weights = p * tab[rowcount() - 1]",
               "out = o * tab[rowmax(j)]")
    q, k, v = inputs()
    tab = leaf(N, low=-1.0, high=2.0)
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    _, j = positions(M, N)

    def at(ix):
        return torch.where((ix >= 0) & (ix < N), tab[ix.clamp(0, N - 1)], 0.0)

    o = attend(softmax(s, kept) * at(agg("count", j, kept) - 1), kept, vv)
    expect = o * at(agg("max", j.expand(B, H, M, N), kept))
    check(ref(src)(q, k, v, tab=tab), expect, [q, k, v, tab])


# ---- the out stage

@pytest.mark.parametrize("mask", MASKS)
def test_rowcount_in_out(mask):
    src = spec(f"mask = {MASKS[mask][0]}", "out = o / max(rowcount(), 1)")
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    expect = attend(softmax(s, kept), kept, vv) / agg("count", s, kept).clamp(min=1)
    check(ref(src)(q, k, v), expect, [q, k, v])


@pytest.mark.parametrize("mask", MASKS)
def test_aggregates_in_out_see_score_p_positions_and_inputs(mask):
    src = spec("input w: f32[H]", f"mask = {MASKS[mask][0]}",
               "out = o * rowmean(p) + rowmax(score) - rowmin(w[h] * (j - i)) + rowsum(w[h] * p * m)")
    q, k, v = inputs()
    w = leaf(H, low=-1.0, high=1.0)
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    i, j = grid_i_j()
    wh = w[None, :, None, None]
    p = softmax(s, kept)
    mrow = torch.arange(M, dtype=F64)[:, None]
    expect = (attend(p, kept, vv) * agg("mean", p, kept) + agg("max", s, kept) - agg("min", wh * (j - i), kept)
              + agg("sum", wh * p * mrow, kept))
    check(ref(src)(q, k, v, w=w), expect, [q, k, v, w])


def test_pair_vector_of_input_rows_inside_an_aggregate():
    """dot(e[j], e[i]) per pair, summed over the row in the out stage; e gets its gradient."""
    src = spec("input e: f32[N, 4]", "mask = window(4)", "out = o * rowsum(dot(e[j], e[i]))")
    q, k, v = inputs()
    e = leaf(N, 4, low=-1.0, high=1.0)
    s, vv = scores(q, k, v)
    kept = kept_of("window")
    i, _ = positions(M, N)
    pair = e[i[:, 0]] @ e.T  # [M, N]: e[i] . e[j]
    check(ref(src)(q, k, v, e=e), attend(softmax(s, kept), kept, vv) * agg("sum", pair, kept), [q, k, v, e])


def test_p_in_out_is_the_norms_weight():
    """The out stage's p is the normalized weight, before the weights stage; a sink takes its share."""
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of("causal")
    src = spec("mask = causal", "norm = softmax(sink = 0.0)", "weights = 2.0 * p", "out = o * rowsum(p)")
    p = softmax(s, kept, sink=0.0)
    check(ref(src)(q, k, v), attend(2.0 * p, kept, vv) * agg("sum", p, kept), [q, k, v])


def test_empty_rows_give_zero_aggregates_and_zero_o():
    q, k, v = inputs()
    src = spec("mask = j < i - 5",
               "out = o + rowsum(score) + rowmean(score) + rowmax(score) + rowmin(score) + rowcount() + 1.0")
    out = ref(src)(q, k, v)
    assert torch.equal(out[:, :, :2], torch.ones_like(out[:, :, :2]))  # o = 0 and every aggregate 0, then + 1
    assert not torch.equal(out[:, :, 2:], torch.ones_like(out[:, :, 2:]))
    out.sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))


@pytest.mark.parametrize("weights", ["score / rowsum(score)", "score / rowmean(score) - rowcount()",
                                     "where(score == rowmax(score), 1.0, 0.0) / rowsum(where(score == rowmax(score), 1.0, 0.0))"])
def test_an_empty_row_divides_by_no_zero(weights):
    """An aggregate is 0 over an empty row, but the row's weights are never used there: no NaN in o or
    in any gradient from the emptiness itself."""
    src = spec("mask = j < i - 5", "norm = none", f"weights = {weights}")
    q, k, v = inputs()
    out = ref(src)(q, k, v)
    assert bool(torch.isfinite(out).all()) and not bool(out[:, :, :2].any())
    out.sum().backward()
    assert all(t.grad is None or bool(torch.isfinite(t.grad).all()) for t in (q, k, v))


def test_rows_before_the_first_key():
    """M > N: query rows m < M - N sit before key 0 and have no causal key."""
    Mq, Nk = 11, 7
    src = spec("mask = causal", "norm = none", "weights = score - rowmean(score)", "out = o + rowcount()")
    q, k, v = inputs(M=Mq, N=Nk)
    s, vv = scores(q, k, v)
    i, j = positions(Mq, Nk)
    kept = (j <= i).expand(B, H, Mq, Nk)
    expect = attend(s - agg("mean", s, kept), kept, vv) + agg("count", s, kept)
    out = ref(src)(q, k, v)
    check(out, expect, [q, k, v])
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))


# ---- nesting

@pytest.mark.parametrize("mask", MASKS)
def test_nested_aggregates(mask):
    src = spec(f"mask = {MASKS[mask][0]}", "norm = none",
               "weights = score * rowmean((score - rowmean(score)) ** 2) + rowmax(score - rowmin(score))",
               "out = o * rowmax(score - rowmean(p))")
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of(mask)
    w = s * agg("mean", (s - agg("mean", s, kept)) ** 2, kept) + agg("max", s - agg("min", s, kept), kept)
    expect = attend(w, kept, vv) * agg("max", s - agg("mean", s, kept), kept)
    check(ref(src)(q, k, v), expect, [q, k, v])


# ---- ties: rowmax/rowmin's value and gradient at the smallest j attaining it

TIES = ("input w: f32[H]", "input u: f32[N]", "score = w[h] * (j % 3) + u[j]")


def tie_inputs():
    """w = [2, -1] and u = 0: integer-valued, so every row's extreme is attained by several keys."""
    w = torch.tensor([2.0, -1.0], dtype=F64, requires_grad=True)
    u = torch.zeros(N, dtype=F64, requires_grad=True)
    _, j = positions(M, N)
    return w, u, w[None, :, None, None] * (j % 3) + u


def firsts(kind: str, mask: str) -> set[int]:
    """The smallest j attaining each nonempty row's extreme, by plain loops."""
    out = set()
    for h, wh in enumerate((2.0, -1.0)):
        for m in range(M):
            i = m + N - M
            row = [j for j in range(N) if bool(MASKS[mask][1](torch.tensor(i), torch.tensor(j)))]
            if row:
                vals = [wh * (j % 3) for j in row]
                best = max(vals) if kind == "max" else min(vals)
                out.add(row[vals.index(best)])
    return out


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("kind", ["max", "min"])
def test_ties_send_the_gradient_to_the_first_key(kind, mask):
    src = spec(*TIES, f"mask = {MASKS[mask][0]}", "norm = none", f"weights = (1.0 + score) * row{kind}(score)")
    q, k, v = inputs()
    w, u, s = tie_inputs()
    _, vv = scores(q, k, v)
    kept = kept_of(mask)
    expect = attend((1.0 + s) * agg(kind, s, kept), kept, vv)
    out = ref(src)(q, k, v, w=w, u=u)
    check(out, expect, [v, w, u])
    # the gradient through the aggregate reaches u only at first attaining keys
    src_only = spec(*TIES, f"mask = {MASKS[mask][0]}", "norm = none", f"out = o * 0.0 + row{kind}(score)")
    g = torch.randn(B, H, M, DV, dtype=F64)
    (du,) = torch.autograd.grad(ref(src_only)(q, k, v, w=w, u=u), [u], g)
    support = {j for j in range(N) if du[j] != 0}
    assert support == firsts(kind, mask), (support, du)


@pytest.mark.parametrize("mask", MASKS)
def test_count_of_maxima_nests_three_deep(mask):
    src = spec(*TIES, f"mask = {MASKS[mask][0]}",
               "out = o * rowsum(where(score == rowmax(score), 1.0, 0.0))")
    q, k, v = inputs()
    w, u, s = tie_inputs()
    _, vv = scores(q, k, v)
    kept = kept_of(mask)
    hits = agg("sum", torch.where(s == agg("max", s, kept), 1.0, 0.0), kept)
    assert int(hits.max()) >= 2
    check(ref(src)(q, k, v, w=w, u=u), attend(softmax(s, kept), kept, vv) * hits, [v, w, u])


# ---- lets

NAP_BODY = ("mask = causal", "norm = none",
            "weights = (score - rowmean(score)) / sqrt(rowmean(score * score) - rowmean(score) ** 2 + 1e-6)")

AVERAGE_HARD_BODY = ("mask = causal", "norm = none", "let hit = where(score == rowmax(score), 1.0, 0.0)",
                     "weights = hit / rowsum(hit)")


def test_a_let_holding_an_aggregate():
    lets = spec("input w: f32[H]", "let mu = rowmean(score)", "let var = rowmean(score * score) - mu ** 2",
                "mask = window(4)", "norm = none", "weights = w[h] * (score - mu) / sqrt(var + 1e-6)",
                "out = o * (1.0 + mu)")
    spelled = spec("input w: f32[H]", "mask = window(4)", "norm = none",
                   "weights = w[h] * (score - rowmean(score)) / sqrt(rowmean(score * score) - rowmean(score) ** 2 "
                   "+ 1e-6)", "out = o * (1.0 + rowmean(score))")
    assert attention_str(compile_source(lets)[0]) == attention_str(compile_source(spelled)[0])
    q, k, v = inputs()
    w = leaf(H, low=0.5, high=1.5)
    s, vv = scores(q, k, v)
    kept = kept_of("window")
    mu = agg("mean", s, kept)
    var = agg("mean", s * s, kept) - mu ** 2
    expect = attend(w[None, :, None, None] * (s - mu) / torch.sqrt(var + 1e-6), kept, vv) * (1.0 + mu)
    check(ref(lets)(q, k, v, w=w), expect, [q, k, v, w])


def test_nap():
    """Normalized attention without probability cage: weights standardized over the row."""
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of("causal")
    mu = agg("mean", s, kept)
    expect = attend((s - mu) / torch.sqrt(agg("mean", s * s, kept) - mu ** 2 + 1e-6), kept, vv)
    check(ref(spec(*NAP_BODY))(q, k, v), expect, [q, k, v])


@pytest.mark.parametrize("tied", [False, True])
def test_average_hard(tied):
    """The mean of the value rows of the keys with the row's largest score (a tie shares it)."""
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    kept = kept_of("causal")
    body, extra = AVERAGE_HARD_BODY, {}
    if tied:
        w, u, s = tie_inputs()
        body, extra = TIES + AVERAGE_HARD_BODY, {"w": w, "u": u}
    top = torch.where(kept, s, -math.inf).amax(-1, keepdim=True)
    hit = (kept & (s == top)).to(F64)
    expect = (hit / hit.sum(-1, keepdim=True)) @ vv
    if tied:
        assert int(hit.sum(-1).max()) >= 2
    out = ref(spec(*body))(q, k, v, **extra)
    check(out, expect, [v])
    out.sum().backward()  # a hard choice: no gradient reaches q and k (nor w and u)
    assert all(x.grad is None or not bool(x.grad.any()) for x in (q, k, *extra.values()))


# ---- selection: the kept keys are the allowed and selected ones

def test_aggregates_over_selected_keys():
    src = spec("mask = j < i - 5", "select = topk(3, by = score)", "norm = none",
               "weights = p - rowmean(p)", "out = o * rowcount()")
    q, k, v = inputs()
    s, vv = scores(q, k, v)
    allowed = kept_of("empty")
    ranked = torch.where(allowed, s.detach(), -math.inf)
    chosen = torch.zeros_like(allowed).scatter(-1, ranked.topk(3, dim=-1).indices, True)
    kept = allowed & chosen
    counts = agg("count", s, kept)
    assert counts[0, 0, :, 0].tolist() == [0, 0, 1, 2, 3, 3, 3]
    check(ref(src)(q, k, v), attend(s - agg("mean", s, kept), kept, vv) * counts, [q, k, v])


# ---- errors: file:line:column, the source line, a caret

FILE = "spec.attn"


def error_at(src: str, line: int, col: int, *fragments: str):
    with pytest.raises(attngen.AttnError) as info:
        compile_source(src, FILE)
    text = str(info.value)
    head, quoted, caret, *_ = text.split("\n")
    assert head.startswith(f"{FILE}:{line}:{col}: error: "), text
    assert quoted == "    " + src.split("\n")[line - 1], text
    assert caret.index("^") == 4 + col - 1, text
    for f in fragments:
        assert f in head, text
    assert "Traceback" not in text


@pytest.mark.parametrize("src, line, col, stage", [
    ("attention a {\n  score = rowsum(dot(q, k))\n}", 2, 11, "the score stage"),
    ("attention a {\n  mask = rowcount() > 2\n}", 2, 10, "the mask stage"),
    ("attention a {\n  mask = causal and score > rowmax(score) - 1.0\n}", 2, 29, "the mask stage"),
    ("attention a { q = q * rowsum(1.0) }", 1, 23, "the q stage"),
    ("attention a { select = topk(2, by = rowmax(score)) }", 1, 37, "select's by="),
    ("attention a { norm = softmax(sink = rowmean(score)) }", 1, 37, "norm's sink="),
])
def test_aggregate_outside_weights_and_out(src, line, col, stage):
    fn = src.split("row")[1].split("(")[0]
    error_at(src, line, col, f"row{fn}() is only allowed in the weights and out stages", stage)


def test_let_with_an_aggregate_used_in_the_score():
    error_at("attention a {\n  let mu = rowmean(p)\n  score = dot(q, k) - mu\n}", 2, 12,
             "rowmean() is only allowed in the weights and out stages", "the score stage")


def test_aggregate_of_a_row():
    error_at("attention a {\n  weights = p * rowsum(q)\n}", 2, 24, "'q' is not available")
    error_at("attention a {\n  input w: f32[D]\n  weights = p * rowsum(w)\n}", 3, 24,
             "rowsum() aggregates a number per key")
    error_at("attention a {\n  out = o * rowmax(o)\n}", 2, 20, "'o' is not available")
    error_at("attention a {\n  out = rowsum(o)\n}", 2, 16, "'o' is not available")


def test_aggregate_arity_and_argument_type():
    error_at("attention a {\n  out = o / rowcount(1)\n}", 2, 13, "rowcount() takes 0 argument(s), got 1")
    error_at("attention a {\n  weights = rowsum()\n}", 2, 13, "rowsum() takes 1 argument(s), got 0")
    error_at("attention a {\n  weights = rowmax(score, p)\n}", 2, 13, "rowmax() takes 1 argument(s), got 2")
    error_at("attention a {\n  weights = p * rowsum(j < 3)\n}", 2, 24, "the argument of rowsum() must be a number")
    error_at("attention a {\n  weights = rowsum\n}", 2, 13, "'rowsum' is a function")
