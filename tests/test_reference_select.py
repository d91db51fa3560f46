"""Reference interpreter, token and block top-k, against naive per-row selection loops.

Each test compares the selected index sets (selected_pairs) AND the outputs and
gradients (softmax over the selected pairs, written directly in torch).
"""

import math

import pytest
import torch

from attngen.reference import ReferenceAttention, selected_pairs
from attngen.driver import compile_source

from refutil import F64, positions, qkv


def spec(src):
    return compile_source(src)[0]


def heads(k, H):
    return k.repeat_interleave(H // k.shape[1], 1)


def attend(q, k, v, kept):
    k, v = heads(k, q.shape[1]), heads(v, q.shape[1])
    s = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~kept, float("-inf"))
    return torch.softmax(s, -1) @ v


def naive_select(by, allowed, keep, K, group):
    """Per (b, head group, row): keep ∧ allowed plus the top K other candidates (ties: smaller index).

    by, allowed, keep: [B, H, M, X] (X keys or blocks); returns the chosen [B, H, M, X].
    With group > 1 the group's heads rank by their summed ``by``.
    """
    B, H, M, X = by.shape
    chosen = torch.zeros(B, H, M, X, dtype=torch.bool)
    for b in range(B):
        for g0 in range(0, H, group):
            hs = range(g0, g0 + group)
            for m in range(M):
                score = [sum(float(by[b, h, m, x]) for h in hs) for x in range(X)]
                ok = [any(bool(allowed[b, h, m, x]) for h in hs) for x in range(X)]
                kept = [any(bool(allowed[b, h, m, x] and keep[b, h, m, x]) for h in hs) for x in range(X)]
                cand = sorted((x for x in range(X) if ok[x] and not kept[x]), key=lambda x: (-score[x], x))
                for x in cand[:K] + [x for x in range(X) if kept[x]]:
                    for h in hs:
                        chosen[b, h, m, x] = True
    return chosen


def check(a, q, k, v, kept):
    """Index sets equal, then outputs and gradients equal to softmax over ``kept``."""
    assert torch.equal(selected_pairs(a, q, k, v), kept)
    out, expect = ReferenceAttention(a)(q, k, v), attend(q, k, v, kept)
    torch.testing.assert_close(out, expect)
    g = torch.randn_like(out)
    for x, y in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expect, (q, k, v), g)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("M", [67, 5])
def test_token_topk_by_score_with_keep(M, share):
    src = f"attention tk {{ mask = causal; select = topk(6, keep = j < 2{', share = group' if share else ''}) }}"
    q, k, v = qkv(M=M)
    i, j = positions(M, 67)
    allowed = (j <= i).expand(2, 4, M, 67)
    by = q @ heads(k, 4).transpose(-1, -2) / math.sqrt(40)
    chosen = naive_select(by.detach(), allowed, (j < 2).expand_as(allowed), 6, 2 if share else 1)
    check(spec(src), q, k, v, allowed & chosen)


def test_token_topk_ties_and_short_rows():
    # by = j % 4 ties heavily: ties go to the smaller j; early rows have fewer than K keys
    src = "attention tk { mask = causal; select = topk(5, by = (j % 4) * 1.0) }"
    q, k, v = qkv(M=67)
    i, j = positions(67, 67)
    allowed = (j <= i).expand(2, 4, 67, 67)
    chosen = naive_select((j % 4).to(F64).expand(2, 4, 67, 67), allowed, torch.zeros_like(allowed), 5, 1)
    kept = allowed & chosen
    assert int(kept[0, 0, 0].sum()) == 1 and int(kept[0, 0, 66].sum()) == 5
    assert kept[0, 0, 66].nonzero().flatten().tolist() == [3, 7, 11, 15, 19]
    check(spec(src), q, k, v, kept)


def test_token_topk_share_group_with_per_head_mask_and_keep():
    # head 1 of each group sees only even keys; the group selects once, each head keeps its own allowed part
    src = """
    attention tk {
        mask = causal and (h % 2 == 0 or j % 2 == 0)
        select = topk(4, by = score, keep = j == h, share = group)
    }"""
    q, k, v = qkv(M=23, N=23)
    i, j = positions(23, 23)
    h = torch.arange(4)[:, None, None]
    allowed = ((j <= i) & ((h % 2 == 0) | (j % 2 == 0)))[None].expand(2, 4, 23, 23)
    keep = (j == h)[None].expand(2, 4, 23, 23)
    by = q @ heads(k, 4).transpose(-1, -2) / math.sqrt(40)
    chosen = naive_select(by.detach(), allowed, keep, 4, 2)
    check(spec(src), q, k, v, allowed & chosen)


def block_inputs(q, k, BS, keys=None):
    """kmean [B, HK, NB, D] by a loop over blocks, and by = q . kmean [B, H, M, NB]."""
    keys = k if keys is None else keys
    N = keys.shape[2]
    nb = -(-N // BS)
    kmean = torch.stack([keys[:, :, b * BS:min(N, b * BS + BS)].mean(2) for b in range(nb)], 2)
    return nb, q @ heads(kmean, q.shape[1]).transpose(-1, -2)


def block_allowed(allowed, BS, nb):
    return torch.stack([allowed[..., b * BS:(b + 1) * BS].any(-1) for b in range(nb)], -1)


def to_keys(chosen_blocks, BS, N):
    return chosen_blocks.repeat_interleave(BS, -1)[..., :N]


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("M", [67, 5])
def test_block_topk_with_own_block_keep(M, share):
    src = f"""
    attention moba {{
        const BS = 8
        mask = causal
        select = topk(3, by = dot(q, kmean), block = BS, keep = jb == i // BS or jb == 0
                      {', share = group' if share else ''})
    }}"""
    q, k, v = qkv(M=M)
    i, j = positions(M, 67)
    allowed = (j <= i).expand(2, 4, M, 67)
    nb, by = block_inputs(q, k, 8)
    jb = torch.arange(nb)[None, :]
    keep = ((jb == i // 8) | (jb == 0)).expand(2, 4, M, nb)
    chosen = naive_select(by.detach(), block_allowed(allowed, 8, nb), keep, 3, 2 if share else 1)
    check(spec(src), q, k, v, allowed & to_keys(chosen, 8, 67))


def test_block_topk_ties_short_last_block_and_k_prologue():
    # kmean is the mean of the l2-normalized keys; the last block holds 3 keys; by = jb % 3 ties
    src = """
    attention blk {
        k = l2norm(k)
        mask = causal
        select = topk(2, by = dot(q, kmean) * 0.0 + (jb % 3) * 1.0, block = 8)
    }"""
    q, k, v = qkv(M=67)
    i, j = positions(67, 67)
    allowed = (j <= i).expand(2, 4, 67, 67)
    nb = 9
    by = (torch.arange(nb) % 3).to(F64).expand(2, 4, 67, nb)
    chosen = naive_select(by, block_allowed(allowed, 8, nb), torch.zeros(2, 4, 67, nb, dtype=torch.bool), 2, 1)
    kept = allowed & to_keys(chosen, 8, 67)
    assert torch.equal(selected_pairs(spec(src), q, k, v), kept)

    src2 = "attention blk { k = l2norm(k); mask = causal; select = topk(2, by = dot(q, kmean), block = 8) }"
    kn = k / k.norm(dim=-1, keepdim=True)
    _, by2 = block_inputs(q, kn, 8)
    chosen2 = naive_select(by2.detach(), block_allowed(allowed, 8, nb), torch.zeros_like(chosen), 2, 1)
    kept2 = allowed & to_keys(chosen2, 8, 67)
    assert torch.equal(selected_pairs(spec(src2), q, k, v), kept2)
    out = ReferenceAttention(spec(src2))(q, k, v)
    s = (q @ heads(kn, 4).transpose(-1, -2) / math.sqrt(40)).masked_fill(~kept2, float("-inf"))
    expect = torch.softmax(s, -1) @ heads(v, 4)
    torch.testing.assert_close(out, expect)
    grad = torch.randn_like(out)
    for x, y in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expect, (q, k, v), grad)):
        torch.testing.assert_close(x, y)


def test_selection_carries_no_gradient_through_by():
    src = """
    attention idx {
        input qi: f32[B, M, 8]
        input ki: f32[B, N, 8]
        mask = causal
        select = topk(4, by = dot(qi[b, m], ki[b, j]))
    }"""
    q, k, v = qkv(M=5, N=19)
    qi = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    ki = torch.randn(2, 19, 8, dtype=F64, requires_grad=True)
    out = ReferenceAttention(spec(src))(q, k, v, qi=qi, ki=ki)
    assert torch.autograd.grad(out.sum(), (qi, ki), allow_unused=True) == (None, None)
    i, j = positions(5, 19)
    allowed = (j <= i).expand(2, 4, 5, 19)
    by = (qi @ ki.transpose(-1, -2))[:, None].expand(2, 4, 5, 19).detach()
    kept = allowed & naive_select(by, allowed, torch.zeros_like(allowed), 4, 1)
    torch.testing.assert_close(out, attend(q, k, v, kept))
