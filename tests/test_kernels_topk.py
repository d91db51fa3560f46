"""Token top-k selection through the generated kernels (TRITON_INTERPRET=1): the keys the topk kernel
lists agree exactly with the reference's choice (index sets: ties to the smaller j, NaN, infinities
and -0.0 in by, rows with fewer than K candidates, keep=, share=group), the lists are well formed,
and outputs and gradients through the selected pairs match the float64 reference for several
norm, weights and out stages."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

import attngen
from attngen.frontend.errors import AttnError
from attngen.ir import nodes as ir
from attngen.ir.types import BOOL
from attngen.reference.interpreter import selected_pairs
from attngen.runtime.jit import TritonAttention
from attngen.driver import compile_file, compile_source
from attngen.verify import assert_close, compare, make_inputs

from example_specs import EXAMPLES

pytestmark = pytest.mark.interpret

SHRINK = {"TOPK": 7, "W": 20}
TOKEN_EXAMPLES = [p for p in EXAMPLES for a in compile_file(p) if a.select is not None and a.select.block is None]
SHAPES = {"square": dict(M=67, N=67), "short": dict(M=5, N=40)}


def _qkv(B, H, HK, M, N, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, M, D, generator=g), torch.randn(B, HK, N, D, generator=g),
            torch.randn(B, HK, N, D, generator=g))


def _pairs(sel: torch.Tensor, N: int, H: int) -> torch.Tensor:
    """Lists [B, Hs, M, K] as bool [B, H, M, N], after checking each is its keys in ascending order,
    then -1 (no entry left unwritten)."""
    listed = sel >= 0
    assert bool((sel < N).all()), "an entry past N (or never written)"
    assert torch.equal(listed, listed.int().cummin(-1).values.bool()), "-1 before a key"
    step = sel[..., 1:] - sel[..., :-1]
    assert bool((step[listed[..., 1:]] > 0).all()), "keys not ascending"
    out = torch.zeros(*sel.shape[:3], N + 1, dtype=torch.bool)
    out.scatter_(-1, torch.where(listed, sel, N).long(), True)
    return out[..., :N].repeat_interleave(H // sel.shape[1], dim=1)


def _check_selection(a: ir.Attention, q, k, v, **inputs) -> torch.Tensor:
    """The kernel's lists, with keep= and the mask, against the reference's pairs; returns the lists."""
    sel = getattr(TritonAttention(a).module, f"{a.name}_selected")(q, k, **inputs)
    x64 = {n: (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x) for n, x in inputs.items()}
    args = (q.double(), k.double(), v.double())
    want = selected_pairs(a, *args, **x64)
    allowed = selected_pairs(replace(a, select=None), *args, **x64)
    keep = torch.zeros_like(allowed)
    if a.select.keep is not None:
        kept = a.select.keep if a.mask is None else ir.Binary("and", a.mask, a.select.keep, BOOL)
        keep = selected_pairs(replace(a, select=None, mask=kept), *args, **x64)
    mine = _pairs(sel, k.shape[2], q.shape[1])
    assert not bool((mine & keep).any()), "a keep= key is listed"
    assert torch.equal((mine & allowed) | keep, want)
    return sel


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("path", TOKEN_EXAMPLES, ids=[p.stem for p in TOKEN_EXAMPLES])
def test_example_selection_matches_the_reference(path, shape):
    a = compile_file(path, {c: v for c, v in SHRINK.items() if c in dict(compile_file(path)[0].consts)})[0]
    sizes = dict(B=2, H=4, HK=2, D=40, DV=40, **SHAPES[shape])
    q, k, v = _qkv(2, 4, 2, **SHAPES[shape], D=40)
    sel = _check_selection(a, q, k, v, **make_inputs(a, sizes, "cpu", torch.Generator().manual_seed(1)))
    # the indexer's by and mask ignore the head: one list per query row serves every head
    assert sel.shape[1] == (1 if path.stem == "dsa_indexer" else 4)


def test_ties_go_to_the_smaller_key():
    # small integer rows: dot products are exact and most of them tie
    a = compile_source("attention t { mask = causal\n select = topk(3, by = dot(q, k)) }")[0]
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randint(-1, 2, s, generator=g).float() for s in ((2, 4, 40, 4), (2, 2, 40, 4), (2, 2, 40, 4)))
    _check_selection(a, q, k, v)
    ref = attngen.jit(a.source, backend="reference")(q.double(), k.double(), v.double())
    torch.testing.assert_close(attngen.jit(a.source)(q, k, v).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("by,heads", [("norm(k)", 4), ("-j", 1)])
def test_lists_per_head_only_where_needed(by, heads):
    # key rows differ by KV head: a by of k alone is chosen per head; one of j alone once for all
    a = compile_source(f"attention t {{ mask = causal\n select = topk(3, by = {by}) }}")[0]
    assert _check_selection(a, *_qkv(2, 4, 2, 20, 20)).shape[1] == heads


def test_nan_infinities_and_signed_zeros_in_by():
    # NaN ranks as -inf (ties with it by key index), -0.0 ties with +0.0
    a = compile_source("attention t { input bias: f32[B, H, M, N]\n select = topk(4, by = bias[b, h, m, j]) }")[0]
    g = torch.Generator().manual_seed(3)
    values = torch.tensor([float("nan"), float("-inf"), float("inf"), 1.0, -0.0, 0.0])
    weights = torch.tensor([0.15, 0.15, 0.05, 0.05, 0.3, 0.3])  # the K-th key is mostly a zero
    bias = values[torch.multinomial(weights, 2 * 4 * 9 * 37, replacement=True, generator=g)].view(2, 4, 9, 37)
    bias[:, :, 0] = float("nan")  # rows of NaN and -inf only
    bias[:, :, 1, ::2] = float("-inf")
    q, k, v = _qkv(2, 4, 2, 9, 37)
    _check_selection(a, q, k, v, bias=bias)


@pytest.mark.parametrize("src", ["mask = window(3)\n select = topk(5, by = score)",
                                 "mask = causal\n select = topk(50, by = score)"], ids=["window", "k-past-n"])
def test_rows_with_fewer_than_k_candidates_keep_them_all(src):
    a = compile_source(f"attention t {{ {src} }}")[0]
    sel = _check_selection(a, *_qkv(2, 4, 2, 40, 40))
    assert bool((sel[..., -1] == -1).all())


def test_keep_is_in_wherever_allowed_and_not_counted():
    a = compile_source("attention t { mask = causal\n select = topk(3, by = score, keep = j < 2 or i - j < 2) }")[0]
    _check_selection(a, *_qkv(2, 4, 2, 67, 67))
    assert_close(compare(a, M=67, N=67, D=40, DV=24))


@pytest.mark.parametrize("src", ["mask = causal\n select = topk(4, by = score, keep = j == 0, share = group)",
                                 "mask = j <= i - h\n select = topk(3, by = score, share = group)"],
                         ids=["keep", "mask-per-head"])
def test_share_group(src):
    # one selection per GQA group, ranked by by summed over its heads; each head keeps it where allowed
    a = compile_source(f"attention t {{ {src} }}")[0]
    sel = _check_selection(a, *_qkv(2, 4, 2, 40, 40))
    assert sel.shape[1] == 2
    assert_close(compare(a, M=40, N=40, D=40, DV=24))


_in_list = None  # the generated modules' membership helper, set by the test below


@triton.jit
def _probe(SEL, OUT, start_n, L: tl.constexpr, LOG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m_r = tl.arange(0, BLOCK_M)[:, None]
    j_c = start_n + tl.arange(0, BLOCK_N)[None, :]
    inside = _in_list(SEL + m_r * L, 1, start_n, j_c, m_r < BLOCK_M, L, LOG, BLOCK_M, BLOCK_N)
    tl.store(OUT + m_r * BLOCK_N + tl.arange(0, BLOCK_N)[None, :], inside.to(tl.int8))


@pytest.mark.parametrize("block_n", [16, 64, 128])
def test_membership_of_a_key_tile(block_n):
    """_in_list at the tile widths the GPU configs use (one bit word per 64 keys)."""
    global _in_list
    _in_list = TritonAttention(compile_source("attention t { select = topk(4, by = score) }")[0]).module._in_list
    g = torch.Generator().manual_seed(4)
    N, L, rows = 300, 100, 16
    lists = torch.full((rows, L), -1, dtype=torch.int32)
    for r in range(rows):
        keys = torch.randperm(N, generator=g)[:torch.randint(0, L + 1, (), generator=g)].sort().values
        lists[r, :len(keys)] = keys
    member = torch.zeros(rows, N + block_n, dtype=torch.bool)
    member.scatter_(1, torch.where(lists < 0, N, lists).long(), True)
    member[:, N] = False
    for start_n in range(0, N, block_n):
        out = torch.empty(rows, block_n, dtype=torch.int8)
        _probe[(1,)](lists, out, start_n, L, L.bit_length(), rows, block_n)
        assert torch.equal(out.bool(), member[:, start_n:start_n + block_n]), start_n


def test_share_group_with_keep_on_the_head_is_refused():
    with pytest.raises(AttnError, match="keep= must not depend on the head"):
        attngen.jit("attention t { select = topk(4, by = score, keep = h == 0, share = group) }")


STAGES = {
    "sigmoid-out": "input gate: f32[B, H, M]\n mask = causal\n select = topk(5, by = score)\n norm = sigmoid\n"
                   " out = o * sigmoid(gate[b, h, m])",
    "weights": "input alpha: f32[B, H, M]\n mask = causal\n select = topk(5, by = -score)\n"
               " weights = alpha[b, h, m] * p",
    "stickbreaking": "mask = causal\n select = topk(5, by = score, keep = i == j)\n norm = stickbreaking",
    "sum-bias": "input kb: f32[B, HK, N]\n score = exp(dot(q, k) * scale) + kb[b, hk, j]\n"
                " select = topk(6, by = dot(q, k))\n norm = sum",
}


@pytest.mark.parametrize("name", sorted(STAGES))
@pytest.mark.parametrize("M,N", [(37, 37), (5, 40)])
def test_stages_through_the_selection(name, M, N):
    """Outputs and the gradients of q, k, v and of floating inputs, through the selected pairs only."""
    a = compile_source(f"attention t {{ {STAGES[name]} }}")[0]
    assert_close(compare(a, M=M, N=N, D=40, DV=24))


def test_data_dependent_mask_and_prepared_tiles():
    """A document mask's per-call tile lists (or prepared ones) with the selection made per call."""
    src = ("attention t { input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]\n"
           " select = topk(3, by = score) }")
    a = compile_source(src)[0]
    assert_close(compare(a, M=40, N=40, D=40, DV=24))
    q, k, v = _qkv(2, 4, 2, 40, 40)
    doc = torch.arange(40).div(7, rounding_mode="floor").expand(2, 40).contiguous().int()
    _check_selection(a, q, k, v, doc=doc)
    fn = attngen.jit(src)
    torch.testing.assert_close(fn(q, k, v, doc=doc, prepared=attngen.prepare(fn, q, k, doc=doc)), fn(q, k, v, doc=doc))


LISTED = {  # the listed forward's three kinds of lists: one for every head, one per GQA group, one per head
    "all-heads": ("mask = causal\n select = topk(6, by = -j)", True),
    "group": ("mask = j <= i - 1\n select = topk(5, by = score, share = group)", True),
    "per-head": ("mask = window(30)\n select = topk(20, by = score)", True),  # 20 keys: two tiles of a list
    "keep": ("mask = causal\n select = topk(4, by = score, keep = j == 0)", False),  # keep= keys are not listed
    "weights": ("mask = causal\n select = topk(4, by = score)\n weights = p * 0.5", False),
}


@pytest.mark.parametrize("name", sorted(LISTED))
def test_the_listed_forward(name):
    """Which specs take the listed kernel (each row against its listed keys only), and that o, lse and the
    gradients (the dense backward after it) match the reference, also for rows with fewer keys than K."""
    src, listed = LISTED[name]
    a = compile_source(f"attention t {{ {src} }}")[0]
    fn = attngen.jit(a.source)
    assert hasattr(fn.module, "t_listed") == listed
    assert ("forward: the listed kernel" in " ".join(fn.module.__doc__.split())) == listed
    assert_close(compare(a, M=37, N=45, D=40, DV=24))
