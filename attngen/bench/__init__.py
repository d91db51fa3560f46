"""``attngen bench``: attngen's kernels against FlexAttention and torch SDPA, in one process.

For each attention and sequence length, every implementation runs on the same inputs
(q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV], M = N, plus the spec's keyword
inputs); attngen's output and gradients are compared with each peer's, then each is
timed forward and forward+backward (attngen also with its mask prepared ahead; optionally
a baseline attention too, attngen only, on the same shapes). Two more modes: decoding
(``--decode``: a few query rows against a KV cache, contiguous and paged, forward only, in
TB/s) and packed prefill (``--varlen``: sequences of mixed lengths in one tensor).

    inputs.py    the benchmark's inputs (q/k/v and the spec's declared inputs)
    peers.py     which peers can run a spec, decided from the IR (Unsupported: why not)
    flexmods.py  a spec's score and mask as FlexAttention score_mod / mask_mod
    pairs.py     allowed (b, h, i, j) pairs counted on the actual inputs, for FLOPs; the key
                 rows they read, for bytes; the pairs of packed sequences
    impls.py     the implementations as callables, and their correctness check
    timing.py    do_bench on CUDA, a perf_counter loop on CPU; host time per call (back to back,
                 or one call on an idle device)
    run.py       the benchmark loop: one record per (attention, seq, pass)
    decode.py    the decode mode's case: one record per (attention, cache length, layout)
    paged.py     a paged copy of a contiguous KV cache, its pages shuffled
    varlen.py    the varlen mode's case, and FlexAttention with a document mask over the packing
    startup.py   a first call with nothing cached, and the host time of a cached call
    report.py    the text tables, the JSON file and the environment
    plot.py      TFLOP/s against sequence length (decode: TB/s against cache length), as a PNG
"""
