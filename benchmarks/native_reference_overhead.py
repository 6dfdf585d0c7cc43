"""Native path: wall time of core sampling with Apply Causal Reference ÷ the same core sampling without it.

    .venv/bin/python benchmarks/native_reference_overhead.py [--frames 16 --steps 20 --size 40 --repeats 3 --width-mult 1]

Core's own SD1.5 model class at the tiny test width (tests/tiny_models.core_sd15_patcher; ``--width-mult K``: K× the
channels, 8 heads of 4·K channels), core's DDIM sampler with CFG 7.5 (the reference's default "drop" mode: only the
conditional half reads it), the frames as the batch, one thread.  Same noise, conditioning and steps in both arms;
the patched arm includes its one reference pass.  Goal (issue 15): ≤ 1.15×.  The size default keeps the tokens-to-
channels ratio of real SD1.5 at 512² (see benchmarks/reference_overhead.py, which measures the pack's own pipe).
The rows that read the reference use core's attention function, so both arms run the same kernel (``--attention``).
"""
from __future__ import annotations

import argparse
import time

from _common import interleaved_medians, setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=40, help="latent side × 2 (the tiny VAE's factor), as the pipe benchmark")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width-mult", type=int, default=1)
    ap.add_argument("--attention", choices=["pytorch", "comfy-cpu-default"], default="pytorch",
                    help="core's attention back-end: pytorch (SDPA, what ComfyUI picks on current GPUs and with "
                         "--use-pytorch-cross-attention) or core's CPU default (sub-quadratic)")
    a = ap.parse_args()
    import tiny_models

    tiny_models.ensure_comfy_importable(["--use-pytorch-cross-attention"] if a.attention == "pytorch" else [])
    setup(models=False)
    import torch

    import comfy.ldm.modules.attention
    import comfy.sample
    import comfy.samplers
    from performer_pkg.nodes.native import apply_causal_reference

    model = tiny_models.core_sd15_patcher(a.width_mult)
    g = torch.Generator().manual_seed(0)
    lat = a.size // 2
    ctx = tiny_models.SD15["context_dim"]
    pos, neg = [[torch.randn(1, 77, ctx, generator=g), {}]], [[torch.randn(1, 77, ctx, generator=g), {}]]
    noise = torch.randn(a.frames, 4, lat, lat, generator=g)
    ref = torch.randn(1, 4, lat, lat, generator=g)
    patched, patch = apply_causal_reference(model, ref, 1.0)
    sampler = comfy.samplers.sampler_object("ddim")

    def run(m):
        sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "ddim_uniform", a.steps)
        t0 = time.perf_counter()
        comfy.sample.sample_custom(m, noise, 7.5, sampler, sigmas, pos, neg, torch.zeros_like(noise), disable_pbar=True, seed=0)
        return time.perf_counter() - t0

    p, r = interleaved_medians(run, model, patched, a.repeats)
    write_result("native_reference_overhead", {
        "spec": vars(a), "plain_s": round(p, 3), "reference_s": round(r, 3), "ratio": round(r / p, 3),
        "attention_kernel": comfy.ldm.modules.attention.optimized_attention.__name__,
        "reference_passes": patch.writes, "runs": patch.runs, "reference_passes_per_run": patch.writes / patch.runs,
        "goal": "<= 1.15"})


if __name__ == "__main__":
    main()
