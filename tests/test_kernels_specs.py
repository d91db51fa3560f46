"""Language corners through the generated kernels (TRITON_INTERPRET=1), forward and backward,
against the float64 reference."""

from __future__ import annotations


import pytest

from attngen.codegen.plan import make_plan
from attngen.passes.pipeline import run_pipeline
from attngen.driver import compile_source
from attngen.verify import assert_close, compare

pytestmark = pytest.mark.interpret

SPECS = {
    # rows element by element (1.1): comparisons, and/or/not on rows of booleans, where with a scalar branch
    "rows_elementwise": """
attention a {
    q = where(q > 0.0, q + 1.0, exp(q))
    k = where(k > -1.0 and not (k > 1.5), k, 0.25)
    score = dot(q, k) * scale
    mask = causal
}""",
    # floor semantics on negative operands, and x // 0 == x % 0 == 0 (off holds zeros)
    "int_division": """
attention int_division {
    input off: i32[B, N]
    score = (dot(q, k) * scale + 0.1 * ((j - i) // 3) + 0.05 * ((i - j) % 5)
             + 0.1 * (j // off[b, j]) + 0.1 * (j % off[b, j]) - 0.2 * (j % (0 - 7)))
    mask = causal or j - i < 2
}""",
    # a query-side scalar factor, a key-side bias and a pair gather in one score
    "mixed_sides": """
attention mixed_sides {
    input kb: f32[B, HK, N]
    input rel: f32[H, 16]
    score = dot(q, k) * scale * (1.0 + 0.1 * log(i + 1.0)) + kb[b, hk, j] + rel[h, clamp(i - j, 0, 15)]
    mask = causal
}""",
    # query rows from an input tensor, key rows from another, reduced with sqdist and norm
    "row_inputs": """
attention row_inputs {
    input qi: f32[B, M, 16]
    input ki: f32[B, N, 16]
    score = dot(q, k) * scale - 0.1 * sqdist(qi[b, m], ki[b, j]) + 0.1 * norm(ki[b, j])
    mask = window(30)
}""",
    # every elementwise function with a gradient, inside a sigmoid norm and an out stage
    "functions": """
attention functions {
    input g: f32[B, H, M, DV]
    score = (tanh(dot(q, k) * scale) + 0.1 * softplus(sin(j * 0.1)) - 0.1 * abs(cos(i * 0.2))
             + 0.1 * sqrt(exp2(min(j, 3) * 0.5)) + 0.1 * rsqrt(1.0 + relu(j - i)))
    mask = causal
    norm = sigmoid
    out = o * sigmoid(g[b, h, m]) + max(o, 0.0) * 0.1
}""",
    # factors that are inf on the zero rows and keys padding a tile (1 / norm of a zero row): the
    # backward must not let 0 * inf reach dk, dq or the scalar's gradient, which sum over them
    "padded_rows": """
attention padded_rows {
    input t: f32
    score = dot(q, k) * scale / norm(q) * t + 0.1 / norm(k) + 0.01 * t * j / norm(q)
    mask = causal
}""",
}


# regressions of the language issue (each crashed or, the block gate, chose wrong blocks silently)
# slices (1.1): of raw q and k (loaded at their offsets), of computed rows (q * 1.5, l2norm(k): a 0/1
# product), of an input row with a gradient (w[h][4:12]), and rope within a slice (its permuted lanes)
SLICES = """
attention s {
    input w: f32[H, 24]
    q = q * 1.5
    score = (dot(q[0:16], k[0:16]) * scale + dot(rope(q[16:24], i), rope(k[16:24], j)) * 0.1
             + dot(w[h][4:12], l2norm(k)[0:8]))
    mask = causal
}"""


# concat (1.1): joined slices (MLA in one dot), and rope over a joined input row and q slice
CONCAT = """
attention c {
    input w: f32[H, 8]
    score = (dot(concat(q[0:8], rope(q[8:24], i)), concat(k[0:8], rope(k[8:24], j))) * scale
             + dot(rope(concat(w[h], q[24:32]), i), k[0:16]) * 0.1)
    mask = causal
}"""


@pytest.mark.parametrize("src", [SLICES, CONCAT], ids=["slices", "concat"])
def test_slices(src):
    a = compile_source(src, "slices.attn")[0]
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=40, DV=16, seed=1))
    assert_close(compare(a, B=1, H=2, HK=2, M=5, N=67, D=32, DV=24))


def test_rope_far_into_the_keys():
    """rope(k, j) at positions into the thousands: the kernels take each key tile's angles from its first
    position's and the in-tile offsets' by the angle-addition formulas (codegen/rows.py)."""
    a = compile_source("attention r {\n q = rope(q, i)\n k = rope(k, j, 500.0)\n mask = causal\n}", "r.attn")[0]
    assert_close(compare(a, B=1, H=1, HK=1, M=3, N=3000, D=16, DV=16, seed=2))


REGRESSIONS = {
    # D and DV are constexprs in the kernels: their int -> float conversion was `D.to(...)`
    "sizes_as_floats": "attention a { score = dot(q, k) / D + log(DV) * 0.01\n mask = causal }",
    # a row input meeting key rows: its gradient is summed over the tile's key rows
    "row_input_grad": "attention a { input w: f32[H, D]\n score = dot(q, k) * scale + dot(w[h], k)\n mask = causal }",
    # a learned block gate (SeerAttention-style): key-side rows read by jb are [blocks, L] tiles
    "block_gate_rows": """
attention a {
    input qg: f32[B, H, 4, 16]
    input kg: f32[B, HK, 4, 16]
    mask = causal
    select = topk(2, by = dot(qg[b, h, i // 16], kg[b, hk, jb]), block = 16, keep = jb == i // 16)
}""",
    # ceil (language 1.1) and floor in a mask: the tile bounds of an integer function are integers
    # (floor's were typed float, which verify() refused)
    "floor_ceil": """
attention a {
    score = dot(q, k) * scale + 0.1 * ceil(dot(q, k) * scale * 2.0) + 0.05 * ceil((j - i) / 3.0)
    mask = causal and ceil(i / 4.0) - floor(j / 4.0) < 3
}""",
    # row reductions (language 1.1): sum, mean, max, min of a row, q-side, k-side and of an input's rows, where
    # the tile's lanes past the row's length (D = 40 in a 64-lane tile) are left out
    "row_reductions": """
attention a {
    input w: f32[B, N, 8]
    score = (dot(q, k) * scale + 0.1 * sum(exp(q * 0.3)) + 0.05 * mean(k) + 0.2 * max(k) - 0.1 * min(q * q)
             + 0.3 * max(w[b, j]) + 0.1 * mean(w[b, j]))
    mask = causal
}""",
    # rows a prologue makes nonzero past their length (exp(0) = 1, 0 + 1 = 1) in a tile wider than D = 40:
    # a dot, a distance and a norm over the whole tile added those lanes (o off by 3 % with elu_linear's
    # norm = sum, silently; softmax alone hides it, the added constant being the same for every key)
    "padded_lanes": """
attention a {
    q = exp(q * 0.5)
    k = k + 1.0
    score = dot(q, k) * scale * 0.1 + 0.1 * norm(q) - 0.01 * sqdist(q, k) - 2.0
    mask = causal
    norm = sigmoid
}""",
    # a per-block scalar gate read by jb
    "block_gate_scalar": """
attention a {
    input w: f32[H, 8]
    mask = causal
    select = topk(2, by = w[h, jb], block = 16, keep = jb == i // 16)
}""",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name):
    a = compile_source(REGRESSIONS[name], f"{name}.attn")[0]
    assert_close(compare(a, B=1, H=4, HK=2, M=64, N=64, D=16, DV=16))
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=40, DV=16, seed=1))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec(name):
    a = compile_source(SPECS[name], f"{name}.attn")[0]
    assert_close(compare(a, M=67, N=67, D=40, DV=24))
    assert_close(compare(a, B=1, H=2, HK=1, M=5, N=67, D=32, DV=32, seed=1))


@pytest.mark.parametrize("scale", [-0.3, 0.0, 0.7])
def test_scale_of_any_sign(scale):
    """The forward scales dot(q, k) after its running max, which needs a positive factor: a negative
    scale runs as -q with -scale, a zero one as a tiny factor, and both must match the reference."""
    a = compile_source("attention signed { mask = causal }", "signed.attn")[0]
    assert run_pipeline(a).scaled_dot is not None
    assert_close(compare(a, M=67, N=50, D=40, DV=24, scale=scale))


@pytest.mark.parametrize("src, fast", [
    ("mask = causal", True),
    ("score = dot(q, k) * scale * 0.5", True),
    ("score = dot(q, k) * scale * -0.5", False),  # the factor's sign is not the scale's
    ("score = dot(q, k) * scale\n norm = softmax(sink = scale)", False),  # -scale would change the sink
    ("q = l2norm(q)", False),  # -q through a prologue is not always the negated score
    ("score = dot(q, k) * scale + 0.1 * (j - i)", False),
])
def test_scaled_dot_detection(src, fast):
    a = compile_source(f"attention t {{\n {src}\n}}", "t.attn")[0]
    assert (run_pipeline(a).scaled_dot is not None) == fast  # the scaled_dot pass


# pair vectors (language 1.1): rows that mix the query and the key side, reduced lane by lane in the kernels
# (codegen/lanes.py), forward and backward
PAIR_VECTORS = {
    # distances and reductions of pair rows after a prologue: norm, max, min, mean, where on a row comparison,
    # a pair scalar and a head scalar inside the lanes, a reduction nested in another's lanes
    "reductions": """
attention a {
    input s: f32[H]
    input t: f32
    q = l2norm(q)
    score = (dot(q, k) * scale - 0.1 * norm(q - k) + 0.05 * max(abs(q - k)) - 0.05 * min(q * k)
             + mean(where(q > k, q, k * 0.5)) + 0.1 * sum(tanh(q * s[h] + k) * (0.1 * (i - j) + t))
             + 0.2 * sum(abs(q - k) / (1.0 + norm(q - k))))
    mask = causal
}""",
    # rows of an input gathered per pair (e[t], t a pair index), the score's constant factor pending on the
    # reduction (its loop writes de itself)
    "gathered_rows": """
attention a {
    const NP = 16
    input e: f32[NP, D]
    score = -0.1 * sqdist(q, k + e[clamp(i - j, 0, NP - 1)]) + dot(q, e[min(j // 8, NP - 1)]) * scale
    mask = causal
}""",
    # l2norm and rmsnorm of pair rows (their norm a pair scalar of its own loop), a head's row w[h]: the decode
    # shapes pack a GQA group's heads in one tile
    "norms": """
attention a {
    input w: f32[H, D]
    score = dot(l2norm(q - k), w[h]) + 0.1 * sum(rmsnorm(q + k, w[h])) + 0.1 * dot(rmsnorm(q, k), w[h])
}""",
    # pair rows of inputs (no q, k) in the mask and in the weights
    "mask_weights": """
attention a {
    input x: f32[B, M, 8]
    input y: f32[B, N, 8]
    mask = causal and max(abs(x[b, m] - y[b, j])) < 0.9
    norm = sigmoid
    weights = p * (1.0 + 0.1 * sum(abs(x[b, m] - y[b, j]) * p))
}""",
}


@pytest.mark.parametrize("name", sorted(PAIR_VECTORS))
def test_pair_vectors(name):
    a = compile_source(PAIR_VECTORS[name], f"{name}.attn")[0]
    assert make_plan(run_pipeline(a)).pair_rows
    assert_close(compare(a, M=67, N=67, D=40, DV=24))
    assert_close(compare(a, B=1, H=2, HK=1, M=5, N=67, D=32, DV=32, seed=1))


@pytest.mark.parametrize("select", ["topk(7, by = -sum(abs(q - k)))",
                                    "topk(2, by = -sum(abs(q - kmean)), block = 16, keep = jb == i // 16)"],
                         ids=["token", "block"])
def test_pair_vectors_choose_keys(select):
    """A selection's by= with a pair row: the topk kernel's [BLOCK_M, BLOCK_N] tiles (then the listed forward, its
    score a pair row too), the select kernel's [BLOCK_M, NBP] ones (q against each block's mean key)."""
    a = compile_source(f"attention a {{\n score = -sum(abs(q - k)) * scale\n mask = causal\n select = {select}\n}}",
                       "select.attn")[0]
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=40, DV=16, seed=1))
