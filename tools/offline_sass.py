"""Static sm_90a SASS counts of attngen's generated kernels, compiled without a GPU.

Between GPU sessions this is the proxy for "did that template change make the hot loop cheaper?".
For each spec it generates the module through attngen, compiles the chosen kernels for
GPUTarget("cuda", 90, 32) with the module's first fixed CUDA config (the ATTNGEN_AUTOTUNE=0
default), and specializes the arguments as Triton's launcher does for contiguous
[B, H, S, D] = [4, 16, 4096, 128] bf16 tensors (H == HK). From triton's own ptxas run and the cubin
it reports shared memory, registers, spill bytes, the whole kernel's SASS instruction count and, for
each tile loop (an innermost loop that issues HGMMA), the instructions of one iteration. Specs
whose attention kernels read a per-call top-k selection (loki, moba, nsa_select, ...) are not supported; the
select and block-sparse kernels of a block top-k spec are (--kernels select,place,attend,attend_dq,attend_dkdv).

Caveats: the counts come from this environment's triton and its bundled ptxas; the H200 sessions
run triton 3.6, whose pipeliner and ptxas can differ (register allocation and spills especially).
Instruction counts are not timings: compare them between versions of the same kernel.

  PYTHONPATH=. python tools/offline_sass.py                           # examples/causal_gqa.attn
  PYTHONPATH=. python tools/offline_sass.py examples/sliding_window.attn --kernels fwd
  PYTHONPATH=. python tools/offline_sass.py --dump causal_gqa_bwd_dkdv   # also the SASS of its loops
  PYTHONPATH=. python tools/offline_sass.py examples/stickbreaking.attn --head-dim 16
  PYTHONPATH=. python tools/offline_sass.py examples/moba.attn -D BLOCK=64 -D TOPK=15 --seq 16384 \
      --kernels select,place,attend,attend_dq,attend_dkdv
"""
import argparse
import collections
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # read at import: under it, @triton.jit gives uncompilable functions
# triton 3.6 (the GPU's) fuses multiply-adds by default; 3.9 warns that its default will change
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

import attngen  # noqa: E402
from attngen.driver import compile_file  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
B, H, S, D = 4, 16, 4096, 128

INS = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?);")
LABEL = re.compile(r"^(\.L_x_\d+):")
SRC_LINE = re.compile(r'//## File "[^"]+", line (\d+)')
COLUMNS = {  # per-iteration opcode groups of the table: prefixes of the SASS opcode
    "HGMMA": ("HGMMA",), "MUFU": ("MUFU",), "FSEL/FSETP": ("FSEL", "FSETP"), "R2UR": ("R2UR",),
    "STL/LDL": ("STL", "LDL"),
}


def compile_as_launched(fn, args, kwargs):
    """triton.compile of fn for TARGET with the signature, constexprs and divisibility attributes that
    JITFunction.run derives from these launch arguments. Returns the kernel and ptxas's -v report."""
    backend = make_backend(TARGET)
    bound, specialization, _ = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, None)
    # triton prints ptxas's report (registers, spills) only if asked, and only when it runs ptxas
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET,
                                options=options.__dict__)
    return kernel, log.getvalue()


def plain_tensors():
    """The tensors of a plain [B, H, S, D] bf16 call (torch.empty: nothing is touched or allocated)."""
    bf, f32 = torch.bfloat16, torch.float32
    t = {n: torch.empty(B, H, S, D, dtype=bf) for n in ("q", "k", "v", "o", "do", "dq", "dk", "dv")}
    t.update(lse=torch.empty(B, H, S, dtype=f32), delta=torch.empty(B, H, S, dtype=f32), one=torch.empty(1, dtype=f32),
             lists=torch.empty(1, dtype=torch.int32))
    return t


def generated(mod, name, kernels, t):
    """[(kernel name, jit function, args, kwargs)] of the chosen kernels of attention `name` in mod."""
    at = getattr(mod, f"_attention_{name}")
    fwds, bwds, common = mod._config_of(D, D, torch.bfloat16, "cuda")
    configs = {"fwd": fwds[0], "bwd_dq": bwds[0]["dq"], "bwd_dkdv": bwds[0]["dkdv"]}
    sizes = {"B": B, "H": H, "HK": H, "M": S, "N": S, "D": D, "DV": D, "TQ": S}
    # call-time inputs, shaped as declared, with their gradients off (inputs without requires_grad)
    xs = {n: torch.empty([sizes.get(d, d) for d in dims], dtype=mod._TORCH_DTYPES[dtype]) if dims is not None
          else 1.0 for n, (dtype, dims) in at.decls.items()}
    flags = at.flags(sizes)
    # the backward's arguments, by name; each kernel takes its own (its launcher passes o for do, and so on).
    # The int32 tile lists stand in for a data-dependent mask's (masks bounded in closed form ignore them).
    try:
        args = at.args(t["q"], t["k"], t["v"], t["o"], t["o"], t["do"], t["do"], t["lse"], t["delta"], t["one"],
                       t["one"], t["lists"], t["lists"], (t["q"], t["q"]), t["dq"], t["dk"], t["dv"], xs,
                       {n: t["one"] if isinstance(x, float) else x for n, x in xs.items()}, sizes, D ** -0.5)
    except KeyError as err:  # an input the wrapper computes per call, such as a top-k selection's _sel
        sys.exit(f"{name}: the kernels read the internal input {err}, which this tool does not build")
    jobs = []
    for kind in kernels:
        fn = getattr(mod, f"{name}_{kind}", None)
        if fn is None:
            sys.exit(f"the generated module has no kernel {name}_{kind}")
        kw = {k: v for k, v in flags.items() if k in fn.arg_names}
        jobs.append((f"{name}_{kind}", fn, mod._bind(fn, args), {**configs[kind], **common, **kw}))
    return jobs


BLOCK_KERNELS = ("select", "place", "attend", "attend_dq", "attend_dkdv")  # of a block top-k spec


def block_kernels(mod, name, select, kinds, t):
    """(kernel name, jit function, args, kwargs) of a block top-k spec's select kernel and block-sparse
    kernels (``select``: its IR stage), launched as the module's _choose, _gather_forward and
    _gather_backward launch them on the GPU (64 gathered rows a chunk, 16 slots a row)."""
    if select is None or not select.block:
        sys.exit(f"{name}: no block selection, so no {', '.join(kinds)} kernel")
    at = getattr(mod, f"_attention_{name}")
    common = mod._config_of(D, D, torch.bfloat16, "cuda")[2]
    sizes = {"B": B, "H": H, "HK": H, "M": S, "N": S, "D": D, "DV": D, "TQ": S}
    nb = -(-S // select.block)
    nbp, rows, dc, warps = mod._select_tiles(nb, common["BLOCK_D"])  # as _choose launches the select kernel
    sel = torch.empty(B, H, S, nb, dtype=torch.bool)
    jobs = []
    if "select" in kinds:
        km = torch.empty(B * H * nbp, common["BLOCK_D"], dtype=torch.float32)
        args, flags = mod._select_args(at, t["q"], t["k"], {}, sizes, common, D ** -0.5, sel)
        counts = torch.empty(64, dtype=torch.int32)  # per row and per row tile alike
        kw = dict(BLOCK_M=rows, BLOCK_N=64, NBP=nbp, BS=select.block, TOPK=select.k, SHARE=select.share, DC=dc,
                  COUNTS=True, num_warps=warps, **flags)
        fn = getattr(mod, f"{name}_select")
        jobs.append((f"{name}_select", fn, mod._bind(fn, args) + [km, sel, counts, counts, nb], kw))
    if "place" in kinds:
        entries = torch.empty(64, dtype=torch.int32)  # tile starts, rows, slots alike
        jobs.append((f"{name}_place", getattr(mod, f"{name}_place"), [sel, entries, entries, entries, S, nb],
                     dict(NBP=nbp, BLOCK_M=rows, num_warps=warps)))
    xs = {"_sel": sel}
    args = at.args(t["q"], t["k"], t["v"], t["o"], t["o"], t["do"], t["do"], t["lse"], t["delta"], t["q"], t["q"],
                   t["q"], t["q"], (t["q"], t["q"]), t["dq"], t["dk"], t["dv"], xs, xs, sizes, D ** -0.5)
    entries = torch.empty(64, dtype=torch.int32)  # chunk table, rows, slots, group bounds alike
    keys = min(64, max(16, 1 << (select.block - 1).bit_length()))
    kw = dict(**common, **at.flags(sizes), BLOCK_M=64, BS=select.block, num_stages=2)
    partial = torch.empty(64, dtype=torch.float32)  # lse partials and the dq buffer (a compile reads dtypes only)
    o_part = torch.empty(64, dtype=torch.bfloat16)  # the forward's are q's dtype
    tails = {"attend": ([entries, entries, entries, o_part, partial, 16, nb, H], dict(BLOCK_N=keys, num_warps=4)),
             "attend_dq": ([entries, entries, partial, nb, H], dict(BLOCK_N=keys, num_warps=8)),
             "attend_dkdv": ([entries, entries, entries, partial, nb, H],
                             dict(BLOCK_N=min(64, select.block & -select.block), num_warps=8))}
    for kind in kinds:
        if kind not in ("select", "place"):
            fn = getattr(mod, f"{name}_{kind}", None)
            if fn is None:
                sys.exit(f"{name}: the module has no {kind} kernel (not a block-sparse spec)")
            jobs.append((f"{name}_{kind}", fn, mod._bind(fn, args) + tails[kind][0], {**kw, **tails[kind][1]}))
    return jobs


def disassemble(cubin, tmp):
    """[(address, opcode, source line, text)] of the cubin's SASS, and {label: address}."""
    path = os.path.join(tmp, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    text = subprocess.run([triton.knobs.nvidia.nvdisasm.path, "-c", "-gi", path], capture_output=True, text=True,
                          check=True).stdout
    ins, labels, pending, line, after_line = [], {}, [], None, False
    for raw in text.splitlines():
        if m := LABEL.match(raw.strip()):
            pending.append(m.group(1))
        elif m := SRC_LINE.search(raw):
            if not after_line:  # of a run of //## lines, the first is the innermost (inlined) location
                line = int(m.group(1))
            after_line = True
        elif m := INS.match(raw):
            after_line = False
            addr = int(m.group(1), 16)
            labels.update((lab, addr) for lab in pending)
            pending = []
            ins.append((addr, m.group(2), line, raw.strip()))
    return ins, labels


def tile_loops(ins, labels):
    """(first, last address) of each loop that issues HGMMA and holds no other such loop. A loop is
    a backward branch; nested spin-waits or an enclosing head loop do not hide the tile loops."""
    spans = {}
    for addr, op, _, raw in ins:
        target = re.search(r"(\.L_x_\d+)", raw)
        if op.startswith("BRA") and target and labels.get(target.group(1), addr + 1) <= addr:
            lo = labels[target.group(1)]
            spans[lo] = max(addr, spans.get(lo, addr))
    hot = [(lo, hi) for lo, hi in spans.items() if any(lo <= a <= hi and op.startswith("HGMMA") for a, op, *_ in ins)]
    return sorted(s for s in hot if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in hot))


def ptxas_report(log):
    """(registers, spill store bytes, spill load bytes) from ptxas -v."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def row(name, kernel, log, tmp):
    """Table lines of one kernel: its totals on the first, one line per tile loop."""
    ins, labels = disassemble(kernel.asm["cubin"], tmp)
    regs, st, ld = ptxas_report(log)
    head = [name, kernel.metadata.shared, regs, f"{st}/{ld}", len(ins)]
    loops = tile_loops(ins, labels)
    if not loops:
        return [head + ["-"] * (2 + len(COLUMNS))], (ins, loops)
    lines = []
    for i, (lo, hi) in enumerate(loops):
        cells = head if i == 0 else [""] * len(head)
        ops = collections.Counter(op for a, op, *_ in ins if lo <= a <= hi)
        groups = ["/".join(str(sum(n for op, n in ops.items() if op.startswith(p))) for p in prefixes)
                  for prefixes in COLUMNS.values()]
        lines.append(cells + [f"{lo:#06x}", sum(ops.values()), *groups])
    return lines, (ins, loops)


def print_table(lines):
    header = ["kernel", "shared B", "regs", "spill st/ld B", "SASS", "loop at", "instr/iter", *COLUMNS]
    lines = [header] + [[str(c) for c in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


def main():
    global D, S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", default=["examples/causal_gqa.attn"], metavar="SPEC.attn")
    ap.add_argument("--kernels", default="bwd_dkdv,bwd_dq,fwd",
                    help="comma-separated: of fwd, bwd_dq, bwd_dkdv; for block top-k specs select, place, attend, "
                         "attend_dq, attend_dkdv")
    ap.add_argument("-D", dest="consts", action="append", default=[], metavar="NAME=VALUE",
                    help="override a const of the specs (repeatable)")
    ap.add_argument("--dump", metavar="KERNEL", help="print the SASS of this kernel's tile loops (source lines: of "
                                                     "the module `python -m attngen show --triton SPEC` prints)")
    ap.add_argument("--head-dim", type=int, default=D, help="D and DV of the tensors (default %(default)s)")
    ap.add_argument("--seq", type=int, default=S, help="S, query rows and keys (default %(default)s)")
    opts = ap.parse_args()
    D, S = opts.head_dim, opts.seq
    kernels = opts.kernels.split(",")
    unknown = set(kernels) - {"fwd", "bwd_dq", "bwd_dkdv", *BLOCK_KERNELS}
    if unknown:
        ap.error(f"unknown kernels: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ATTNGEN_CACHE_DIR"] = tmp  # generate the modules afresh, and leave nothing behind
        t, jobs = plain_tensors(), []
        consts = {n: int(v) for n, v in (c.split("=", 1) for c in opts.consts)}
        attention = [k for k in kernels if k not in BLOCK_KERNELS]
        block = [k for k in kernels if k in BLOCK_KERNELS]
        for spec in opts.specs:
            for attn in compile_file(spec, consts):
                mod = attngen.load(spec, attn.name, consts=consts).module
                if block:
                    jobs += block_kernels(mod, attn.name, attn.select, block, t)
                if attention:
                    jobs += generated(mod, attn.name, attention, t)
        table, dumps = [], {}
        for name, fn, args, kwargs in jobs:
            kernel, log = compile_as_launched(fn, args, kwargs)
            lines, dumps[name] = row(name, kernel, log, tmp)
            table += lines
    print(f"sm_90a, triton {triton.__version__}, [B, H, S, D] = [{B}, {H}, {S}, {D}] bf16; "
          f"per loop: instructions per iteration, per warp")
    print_table(table)
    if opts.dump:
        if opts.dump not in dumps:
            sys.exit(f"--dump: no kernel {opts.dump}; compiled: {', '.join(dumps)}")
        ins, loops = dumps[opts.dump]
        for lo, hi in loops:
            print(f"\n{opts.dump}: loop {lo:#06x}-{hi:#06x} (source line, SASS)")
            for addr, _, line, raw in ins:
                if lo <= addr <= hi:
                    print(f"{line or '':>6}  {raw}")


if __name__ == "__main__":
    main()
