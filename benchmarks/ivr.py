"""IVR optimisation throughput (steps/s) on this CPU, pure PyTorch, at 64×64×16 and 256×256×16 (default IVRConfig:
16 levels × 2 features, tables 2^16 / 2^15, 8192 pixels per step, Sobel term every 4th step, flow loss on).

    .venv/bin/python benchmarks/ivr.py [--steps 40] [--device cpu|cuda]

On a CUDA machine with tinycudann installed the hash encodings switch to tcnn automatically; run with
``--device cuda`` there to compare (``--backend torch`` forces pure PyTorch).
"""
from __future__ import annotations

import argparse
import time

from _common import setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "tcnn"])
    a = ap.parse_args()
    setup()
    import torch

    from performer_pkg.models.refine.ivr import IVR, IVRConfig, fit_ivr

    res = {"device": a.device, "backend": a.backend, "threads": torch.get_num_threads(), "results": {}}
    for size in (64, 256):
        video = torch.rand(16, size, size, 3)
        flow = {"flow": torch.zeros(15, size, size, 2), "valid": torch.ones(15, size, size, dtype=torch.bool)}
        m = IVR(IVRConfig()).to(a.device)
        m.h_def.backend = m.h_can.backend = a.backend
        fit_ivr(m, video, 2, flow)  # warm-up
        t = time.perf_counter()
        fit_ivr(m, video, a.steps, flow)
        res["results"][f"{size}x{size}x16"] = {"steps_per_s": round(a.steps / (time.perf_counter() - t), 2)}
    write_result("ivr", res)


if __name__ == "__main__":
    main()
