"""Run the module written by `attngen compile examples/alibi_window.attn -o alibi_window.py`.

It needs only torch and triton. On a CUDA machine it runs on the GPU in bf16; on a CPU
it runs the same kernels under TRITON_INTERPRET=1 in float32. Forward and backward are
checked against a plain-torch formula of the same attention.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from alibi_window import alibi_window  # noqa: E402 - the compiled module, written next to the cwd

WINDOW = 1024


def reference(q, k, v, slopes):
    """Sliding-window causal attention with ALiBi, written directly in torch (GQA by repetition)."""
    B, H, M, D = q.shape
    N = k.shape[2]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    v = v.repeat_interleave(H // v.shape[1], dim=1)
    i = torch.arange(M, device=q.device)[:, None] + (N - M)
    j = torch.arange(N, device=q.device)[None, :]
    s = q @ k.transpose(-1, -2) / math.sqrt(D) + slopes[None, :, None, None] * (j - i)
    s = s.masked_fill(~((j <= i) & (i - j < WINDOW)), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def main():
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, HK, M, N, D = (2, 16, 4, 2048, 2048, 128) if cuda else (1, 4, 2, 100, 100, 64)
    torch.manual_seed(0)
    q = torch.randn(B, H, M, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, HK, N, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, HK, N, D, device=device, dtype=dtype, requires_grad=True)
    slopes = torch.rand(H, device=device, requires_grad=True)
    o = alibi_window(q, k, v, slopes=slopes)
    do = torch.randn_like(o)
    o.backward(do)
    grads = [t.grad for t in (q, k, v, slopes)]
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v, slopes)]
    ref = reference(*leaves)
    ref.backward(do.double())
    for label, got, want in zip(("o", "dq", "dk", "dv", "dslopes"), [o, *grads], [ref, *(t.grad for t in leaves)]):
        err = ((got.double() - want).norm() / want.norm()).item()
        print(f"{label:>8}: relative error {err:.2e}")
        assert err < (3e-2 if dtype == torch.bfloat16 else 1e-4), f"{label} is off"
    print(f"alibi_window ok on {device} ({dtype}), o {tuple(o.shape)}")


if __name__ == "__main__":
    main()
