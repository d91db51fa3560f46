"""Call validation for generated modules: shapes, dtypes, devices, keyword inputs, packed and paged
calls. Every error names the function, the tensor and the dimension.

Shipped: the generated module embeds this file verbatim (after its imports); ``decls`` is a
module's declarative list of its inputs (``_NAME_INPUTS``).
"""

import difflib
import math
import os

import torch

#: torch dtype of each declared input dtype
_TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                 "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
_QKV_DIMS = {"q": "[B, H, M, D]", "k": "[B, HK, N, D]", "v": "[B, HK, N, DV]"}


def _floats(float64):
    """The float dtypes a call may use: the kernels', and float64 for the reference backend."""
    return (torch.float16, torch.bfloat16, torch.float32) + ((torch.float64,) if float64 else ())


def _check_call(fn, decls, q, k, v, inputs):
    """Validate a call of the kernels before launch: shapes, dtypes, devices and keyword inputs."""
    sizes = _check_qkv(fn, q, k, v)
    device = q.device
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"{fn}: q is on {device}; the Triton kernels run on CUDA tensors (or on the CPU "
                         "under TRITON_INTERPRET=1)")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{fn}: CPU tensors run the Triton kernels only under TRITON_INTERPRET=1 "
                         "(or use attngen's backend='reference')")
    if decls or inputs:
        _check_inputs(fn, decls, inputs, sizes, device)
    return sizes


def _check_qkv(fn, q, k, v, float64=False):
    """The sizes B, H, HK, M, N, D, DV of q [B, H, M, D], k [B, HK, N, D] and v [B, HK, N, DV] (one
    dtype, one device; ``float64``: the reference backend's). B, M and N may be 0 (empty outputs, or
    rows with no key); the other sizes must be at least 1."""
    allowed = _floats(float64)
    for nm, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {nm} must be a torch.Tensor {_QKV_DIMS[nm]}, got {type(t).__name__}")
    device = q.device
    for nm, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{fn}: {nm} must have 4 dims {_QKV_DIMS[nm]}, got shape {tuple(t.shape)}")
        if t.device.type == "meta":
            raise ValueError(f"{fn}: {nm} is on the meta device, which holds no values to attend over")
        if t.dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{fn}: {nm} has dtype {t.dtype}; supported: {names}")
        if t.device != device:
            raise ValueError(f"{fn}: q, k and v must be on one device: q is on {device}, {nm} is on {t.device}")
    for nm, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: q, k and v must share a dtype: q is {q.dtype}, {nm} is {t.dtype}")
    B, H, M, D = q.shape
    _, HK, N, _ = k.shape
    DV = v.shape[3]
    if k.shape[0] != B or k.shape[3] != D or v.shape[:3] != k.shape[:3]:  # say which dim (the fast path skips this)
        for nm, t, dim, label, want in (("k", k, 0, "B", B), ("k", k, 3, "D", D), ("v", v, 0, "B", B),
                                        ("v", v, 1, "HK", HK), ("v", v, 2, "N", N)):
            if t.shape[dim] != want:
                src = "q" if label in ("B", "D") else "k"
                raise ValueError(f"{fn}: {nm}: dim {dim} must be {label}={want} (from {src}), got {t.shape[dim]}")
    for nm, dim, label, n in (("q", 1, "H", H), ("k", 1, "HK", HK), ("q", 3, "D", D), ("v", 3, "DV", DV)):
        if n < 1:
            raise ValueError(f"{fn}: {nm}: dim {dim} ({label}) must be at least 1, got {n}")
    if H % HK:
        raise ValueError(f"{fn}: the query heads H={H} (q dim 1) must be a multiple of the key/value heads "
                         f"HK={HK} (k dim 1)")
    return {"B": B, "H": H, "HK": HK, "M": M, "N": N, "D": D, "DV": DV}


def _check_scale(fn, scale, D):
    """The softmax scale as a finite Python float: default 1/sqrt(D); a number or a 0-d float tensor."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, torch.Tensor):
        if scale.dim() != 0 or not scale.is_floating_point():
            raise TypeError(f"{fn}: scale must be a number or a 0-d float tensor, got a {scale.dtype} tensor "
                            f"of shape {tuple(scale.shape)}")
        scale = scale.item()
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"{fn}: scale must be a number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"{fn}: scale must be finite, got {scale}")
    return float(scale)


def _check_flags(fn, **flags):
    """Boolean keywords (return_lse, validate) must be bools: a string such as "no" is truthy."""
    for nm, x in flags.items():
        if not isinstance(x, bool):
            raise TypeError(f"{fn}: {nm} must be True or False, got {x!r}")


def _empty_result(o_shape, lse_shape, q, tensors):
    """The outputs of a call with no query rows (B, M or TQ = 0): o and lse of the right shapes and
    no kernel launch. o stays connected to the inputs, so backward() runs and gives zero gradients,
    as SDPA's does."""
    o = torch.zeros(o_shape, device=q.device, dtype=q.dtype)
    lse = torch.full(lse_shape, -float("inf"), device=q.device, dtype=torch.float32)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            o = o + t.reshape(-1)[:0].sum().to(o.dtype)  # zero elements: no value, a zero gradient
    return o, lse


def _check_inputs(fn, decls, inputs, sizes, device, float64=False):
    """Keyword inputs: declared, present, of the declared dtype and shape, on ``device``. A scalar
    input is a Python number or a 0-d float tensor; ``float64``: float inputs may be float64 (the
    reference backend)."""
    unexpected = sorted(set(inputs) - set(decls))
    if unexpected:
        near = difflib.get_close_matches(unexpected[0], list(decls), n=1)
        hint = (f"did you mean '{near[0]}'?" if near else f"inputs are: {', '.join(decls)}" if decls
                else f"{fn} declares no inputs")
        raise TypeError(f"{fn}: unexpected keyword input '{unexpected[0]}'; {hint}")
    floats = _floats(float64)
    for nm, (dtype, dims) in decls.items():
        decl = _declaration(dtype, dims)
        if nm not in inputs or inputs[nm] is None:
            raise TypeError(f"{fn}: missing keyword input '{nm}' (declared {decl})")
        x = inputs[nm]
        if dims is None:
            if isinstance(x, torch.Tensor):
                if x.dim() != 0:
                    raise ValueError(f"{fn}: {nm}: a scalar input (declared {dtype}) must be a Python number or "
                                     f"a 0-d tensor, got shape {tuple(x.shape)}")
                if x.dtype not in floats:
                    raise TypeError(f"{fn}: {nm}: expected a floating 0-d tensor (declared {dtype}), got {x.dtype}")
                if x.device != device:
                    raise ValueError(f"{fn}: {nm} is on {x.device} but q is on {device}")
            elif not isinstance(x, (int, float)) or isinstance(x, bool):
                raise TypeError(f"{fn}: {nm}: expected a Python float or a 0-d tensor (declared {dtype}), "
                                f"got {type(x).__name__}")
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{fn}: {nm}: expected a torch.Tensor (declared {decl}), got {type(x).__name__}")
        want = _TORCH_DTYPES[dtype]
        if x.dtype != want and not (float64 and want.is_floating_point and x.dtype == torch.float64):
            raise TypeError(f"{fn}: {nm}: expected dtype {want} (declared {decl}), got {x.dtype}")
        _check_shape(fn, nm, dtype, dims, x, sizes)
        if x.device != device:
            raise ValueError(f"{fn}: {nm} is on {x.device} but q is on {device}")


def _declaration(dtype, dims):
    """An input's declared type as written: ``f32[H]``, ``f32``."""
    return dtype if dims is None else f"{dtype}[{', '.join(str(d) for d in dims)}]"


def _check_shape(fn, nm, dtype, dims, x, sizes):
    """Tensor input ``nm`` has its declared dims: names of sizes (``sizes``) or literal lengths."""
    if x.dim() != len(dims):
        raise ValueError(f"{fn}: {nm}: expected {len(dims)} dim(s) [{', '.join(str(d) for d in dims)}] "
                         f"(declared {_declaration(dtype, dims)}), got shape {tuple(x.shape)}")
    for dim, (got, want) in enumerate(zip(x.shape, dims)):
        exp = sizes[want] if isinstance(want, str) else want
        if got != exp:
            label = f"{want}={exp}" if isinstance(want, str) else str(exp)
            raise ValueError(f"{fn}: {nm}: dim {dim} must be {label}, got {got}")


def _check_paged(fn, decls, q, k, v, inputs, table, lengths, validate):
    """Validate a call on a paged cache: shapes, dtypes and devices on the host; the values of
    block_table and seqlens_k too unless ``validate`` is False (on the host when they are CPU
    tensors, else with one small copy back from the device: a sync, which decoding loops skip with
    validate=False; the kernels clamp pages and lengths, so a bad table never reads out of bounds).
    Returns sizes and the table and lengths on q's device."""
    for nm, t, want in (("k_cache", k, "[pages, page_size, HK, D]"), ("v_cache", v, "[pages, page_size, HK, DV]")):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{fn}: with block_table, {nm} must be {want}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{fn}: k_cache {tuple(k.shape)} and v_cache {tuple(v.shape)} differ in pages, page size or heads")
    page_size = k.shape[1]
    for nm, t, dims in (("block_table", table, 2), ("seqlens_k", lengths, 1)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != dims:
            raise TypeError(f"{fn}: {nm} must be a {dims}-d int32 tensor")
        if t.device != q.device and t.device.type != "cpu":
            raise ValueError(f"{fn}: {nm} is on {t.device}; pass it on q's device ({q.device}) or on the CPU")
    if q.dim() != 4 or table.shape[0] != q.shape[0] or lengths.shape[0] != q.shape[0]:
        raise ValueError(f"{fn}: q [B, H, M, D], block_table [B, max_pages] and seqlens_k [B] must agree on B")
    capacity = table.shape[1] * page_size
    if validate:
        _check_pages(fn, table, lengths, k.shape[0], page_size, capacity)
    for nm, t in (("k_cache", k), ("v_cache", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{fn}: {nm} must match q's dtype and device ({q.dtype}, {q.device}), "
                            f"got {t.dtype}, {t.device}")
    B, H, M, D = q.shape
    if q.dtype not in _floats(False) or k.shape[3] != D or k.shape[2] < 1 or H % k.shape[2]:
        raise ValueError(f"{fn}: q {tuple(q.shape)} ({q.dtype}) does not fit k_cache {tuple(k.shape)}: need "
                         "fp16/bf16/fp32, the same head dim D, and H a multiple of the cache's HK")
    sizes = {"B": B, "H": H, "HK": k.shape[2], "M": M, "N": capacity, "D": D, "DV": v.shape[3]}
    _check_inputs(fn, decls, inputs, sizes, q.device)
    return sizes, table.to(q.device, non_blocking=True), lengths.to(q.device, non_blocking=True)


def _check_pages(fn, table, lengths, pages, page_size, capacity):
    """Every length in 1..capacity, every page a sequence uses in 0..pages-1 (where the tensors
    live: one small copy back when that is the device)."""
    bad_len = (lengths < 1) | (lengths > capacity)
    used = torch.arange(table.shape[1], device=table.device)[None, :] < ((lengths + page_size - 1) // page_size)[:, None]
    bad_page = used & ((table < 0) | (table >= pages))
    if any(torch.stack([bad_len.any(), bad_page.any()]).tolist()):
        for b, (n, row, bad) in enumerate(zip(lengths.tolist(), table.tolist(), bad_page.tolist())):
            if not 1 <= n <= capacity:
                raise ValueError(f"{fn}: seqlens_k[{b}] = {n} must be in 1..{capacity} (max_pages x page_size)")
            if any(bad):
                page = row[bad.index(True)]
                raise ValueError(f"{fn}: block_table[{b}] refers to page {page}, but the cache has pages 0..{pages - 1}")


class _Varlen:
    """Packed variable-length sequences: q [TQ, H, D], k [TK, HK, D], v [TK, HK, DV]; sequence b
    holds query rows cu_q[b]:cu_q[b + 1] and keys cu_k[b]:cu_k[b + 1]; M and N are the longest."""

    def __init__(self, cu_q, cu_k, max_q, max_k):
        self.cu_q, self.cu_k, self.max_q, self.max_k = cu_q, cu_k, max_q, max_k
        self.batch = cu_q.numel() - 1


def _packed(x, batch):
    """A packed [T, heads, L] tensor as the kernels index it: [B, heads, T, L] with a batch stride
    of 0 (each sequence's first row comes from cu_seqlens)."""
    return x.permute(1, 0, 2).unsqueeze(0).expand(batch, x.shape[1], x.shape[0], x.shape[2])


def _check_varlen(fn, decls, q, k, v, inputs, cu_q, cu_k, max_q, max_k):
    """Validate a packed call on the host (one small device-to-host copy of cu_seqlens)."""
    for nm, t, want in (("q", q, "[TQ, H, D]"), ("k", k, "[TK, HK, D]"), ("v", v, "[TK, HK, DV]")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {nm} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{fn}: with cu_seqlens, {nm} must be packed {want}, got shape {tuple(t.shape)}")
    _check_call(fn, {}, *(t.permute(1, 0, 2)[None] for t in (q, k, v)), {})  # dtypes, devices, heads, head dims
    lens = []  # per sequence, from the host copies (one device-to-host copy per cu_seqlens)
    for nm, cu, rows in (("cu_seqlens_q", cu_q, q.shape[0]), ("cu_seqlens_k", cu_k, k.shape[0])):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1:
            raise TypeError(f"{fn}: {nm} must be a 1-d int32 tensor")
        if cu.device != q.device:
            raise ValueError(f"{fn}: {nm} is on {cu.device} but q is on {q.device}")
        if cu.numel() < 2:
            raise ValueError(f"{fn}: {nm} needs at least 2 entries (one sequence), got {cu.numel()}")
        host = cu.tolist()
        if host[0] != 0 or host[-1] != rows or any(a > b for a, b in zip(host, host[1:])):
            raise ValueError(f"{fn}: {nm} must start at 0, never decrease and end at the {rows} packed rows, "
                             f"got {host if len(host) <= 8 else host[:4] + ['...'] + host[-2:]}")
        lens.append([b - a for a, b in zip(host, host[1:])])
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"{fn}: cu_seqlens_q has {cu_q.numel() - 1} sequences but cu_seqlens_k has {cu_k.numel() - 1}")
    lens_q, lens_k = lens
    for nm, given, real in (("max_seqlen_q", max_q, max(lens_q)), ("max_seqlen_k", max_k, max(lens_k))):
        if not isinstance(given, int) or given < real:
            raise ValueError(f"{fn}: {nm} must be an int >= the longest sequence ({real}), got {given!r}")
    if any(m > 0 and n == 0 for m, n in zip(lens_q, lens_k)):
        raise ValueError(f"{fn}: a sequence with query rows has no keys (cu_seqlens_k)")
    sizes = {"B": cu_q.numel() - 1, "H": q.shape[1], "HK": k.shape[1], "M": max_q, "N": max_k,
             "D": q.shape[2], "DV": v.shape[2]}
    _check_inputs(fn, decls, inputs, sizes, q.device)
    return sizes
