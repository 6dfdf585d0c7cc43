"""Wan, native path: wall time of core sampling with Apply Causal Reference ÷ the same core sampling without it.

    .venv/bin/python benchmarks/native_wan_reference_overhead.py [--frames 9 --latent 16 --steps 20 --layers 4 --repeats 5]

Core's own Wan 2.1 text-to-video DiT (``comfy.ldm.wan.model.WanModel``, loaded by core from a state dict in the
released files' layout: tests/tiny_models.core_wan_patcher) at 128 channels (one 128-d head, as Wan's) and ``--layers``
blocks, float32 on the CPU, one thread; core's Euler sampler with CFG 5 (both halves in one batch; the reference's
default "keep" mode: both read it).  Same noise, text embeddings and steps in both arms; the patched arm includes its
one reference pass per run.  The default sizes keep real Wan 2.1 1.3B's ratio of attention to projection work at
832×480 × 33 frames (2·tokens / (4·dim + 2·ffn) ≈ 1.1 there, 1.1 here with 9 latent frames of 8×8 tokens), so the
reference's extra keys (one latent frame's tokens) weigh as they do at real size.  Goal (issue 20): ≤ 1.15×.
``--attention`` picks core's kernel (both arms use the same).
"""
from __future__ import annotations

import argparse
import time

from _common import interleaved_medians, setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=9, help="latent frames (33 video frames for Wan's VAE)")
    ap.add_argument("--latent", type=int, default=16, help="latent side (tokens per frame: (latent/2)²)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attention", choices=["pytorch", "comfy-cpu-default"], default="pytorch",
                    help="core's attention back-end: pytorch (SDPA, what ComfyUI picks on current GPUs) or core's CPU default")
    a = ap.parse_args()
    import tiny_models

    tiny_models.ensure_comfy_importable(["--use-pytorch-cross-attention"] if a.attention == "pytorch" else [])
    setup(models=False)
    import torch

    import comfy.ldm.modules.attention
    import comfy.sample
    from performer_pkg.nodes.native import apply_causal_reference

    model = tiny_models.core_wan_patcher(num_layers=a.layers)
    dm = model.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    pos, neg = [[tiny_models.wan_text(1), {}]], [[tiny_models.wan_text(2), {}]]
    noise = torch.randn(1, 16, a.frames, a.latent, a.latent, generator=g)
    ref = torch.randn(1, 16, 1, a.latent, a.latent, generator=g)
    patched, patch = apply_causal_reference(model, ref, 1.0)

    def run(m):
        t0 = time.perf_counter()
        comfy.sample.sample(m, noise, a.steps, 5.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
                            disable_pbar=True, seed=0)
        return time.perf_counter() - t0

    p, r = interleaved_medians(run, model, patched, a.repeats)
    tokens = a.frames * (a.latent // 2) ** 2
    write_result("native_wan_reference_overhead", {
        "spec": vars(a), "dim": dm.dim, "ffn_dim": dm.ffn_dim, "tokens": tokens,
        "attention_to_projection": round(2 * tokens / (4 * dm.dim + 2 * dm.ffn_dim), 2),
        "plain_s": round(p, 3), "reference_s": round(r, 3), "ratio": round(r / p, 3),
        "attention_kernel": comfy.ldm.modules.attention.optimized_attention.__name__,
        "reference_passes": patch.writes, "runs": patch.runs, "reference_passes_per_run": patch.writes / patch.runs,
        "goal": "<= 1.15"})


if __name__ == "__main__":
    main()
