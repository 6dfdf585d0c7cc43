"""Why the reference's cost depends on head width on a CPU: PyTorch's CPU attention kernel per head channel.

    .venv/bin/python benchmarks/attention_heads.py [--tokens 400 --batch 16 --heads 8]

Times ``F.scaled_dot_product_attention`` (the kernel diffusers and our reference processor use) for a batch of frames
with ``--tokens`` queries, over ``tokens`` keys (plain self-attention) and ``2·tokens`` keys (the conditional half with
the reference), for head widths 4 (the test-size UNet's first level), 8, 16 and 40 (SD1.5).  Reports milliseconds and
GFLOP/s (4·q·k·d multiply-adds counted as flops): a 4-channel head gets far fewer flops per second than a 40-channel
one, so attention — the only part the reference adds to — takes a larger share of a 4-channel-head UNet's time than
its flop count says.  One thread unless BENCH_THREADS says otherwise.
"""
from __future__ import annotations

import argparse
import os
import time

from _common import write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    g = torch.Generator().manual_seed(0)

    def best(fn):
        fn()
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    rows = {}
    for d in (4, 8, 16, 40):
        q = torch.randn(a.batch, a.heads, a.tokens, d, generator=g)
        row = {}
        for name, keys in (("plain", a.tokens), ("with_reference", 2 * a.tokens)):
            k = torch.randn(a.batch, a.heads, keys, d, generator=g)
            v = torch.randn(a.batch, a.heads, keys, d, generator=g)
            t = best(lambda: F.scaled_dot_product_attention(q, k, v))
            flops = 4 * a.batch * a.heads * a.tokens * keys * d
            row[name] = {"ms": round(t * 1e3, 2), "gflop_s": round(flops / t / 1e9, 2)}
        rows[f"head_dim_{d}"] = row
    write_result("attention_heads", {"tokens": a.tokens, "batch": a.batch, "heads": a.heads,
                                     "threads": torch.get_num_threads(), "results": rows})


if __name__ == "__main__":
    main()
