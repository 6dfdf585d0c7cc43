"""Seconds per frame and peak memory of real-size Wan 2.1 1.3B text-to-video sampling, with and without Apply Causal
Reference (random weights: speed does not depend on them).  Goal (issue 20): with ÷ without ≤ 1.10× at 832×480,
33 frames, bf16.

    python benchmarks/gpu_wan_realsize.py           # CUDA: Wan 2.1 1.3B (dim 1536, 30 blocks, ffn 8960), 832×480, 33 frames
    python benchmarks/gpu_wan_realsize.py --tiny    # the same code on the CPU at a toy size (a smoke run)

The DiT is core's ``WanModel``, loaded by core (``comfy.sd.load_diffusion_model_state_dict``) from a random state dict
in the released file's key layout; sampling is core's (Euler, ``simple`` schedule, CFG 5, both halves in one batch),
under core's model management.  Text embeddings are random (1, 512, 4096) (umt5-xxl's output shape).  Each arm once
for warm-up, then the median of ``--repeats``; peak memory is ``torch.cuda.max_memory_allocated`` per arm.
Writes out/benchmarks/gpu_wan_realsize.json (``_tiny`` with --tiny).
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import setup, write_result

REAL = dict(dim=1536, ffn_dim=8960, num_layers=30)
TINY = dict(dim=128, ffn_dim=256, num_layers=2)


def random_state(module, device, dtype, seed=0):
    """Random weights for every tensor of ``module`` (built on the meta device), made on ``device``."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if t.ndim == 1:
            x = 1 + 0.05 * torch.randn(t.shape, generator=g, device=device) if name.endswith("weight") else \
                0.02 * torch.randn(t.shape, generator=g, device=device)
        else:
            x = torch.randn(t.shape, generator=g, device=device) / max(1, t[0].numel()) ** 0.5
        out[name] = x.to(dtype)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=33, help="video frames (latent frames: (frames - 1) / 4 + 1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.tiny:
        a.width, a.height, a.frames, a.steps, a.repeats = 64, 32, 9, 2, 1
    import tiny_models

    tiny_models.ensure_comfy_importable([] if not a.tiny else ["--cpu"])
    setup(models=False)
    import torch

    import comfy.ops
    import comfy.sample
    import comfy.sd
    from comfy.ldm.wan.model import WanModel
    from performer_pkg.nodes.native import apply_causal_reference

    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    arch = TINY if a.tiny else REAL
    meta = WanModel(model_type="t2v", in_dim=16, out_dim=16, text_dim=4096, num_heads=arch["dim"] // 128, device="meta",
                    operations=comfy.ops.disable_weight_init, **arch)
    model = comfy.sd.load_diffusion_model_state_dict(random_state(meta, device, dtype), model_options={"dtype": dtype})
    del meta
    lat_t, lat_h, lat_w = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    g = torch.Generator().manual_seed(0)
    text = 8 if a.tiny else 512
    pos, neg = [[torch.randn(1, text, 4096, generator=g), {}]], [[torch.randn(1, text, 4096, generator=g), {}]]
    noise = torch.randn(1, 16, lat_t, lat_h, lat_w, generator=g)
    ref = torch.randn(1, 16, 1, lat_h, lat_w, generator=g)
    patched, patch = apply_causal_reference(model, ref, 1.0)

    def run(m):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        comfy.sample.sample(m, noise, a.steps, 5.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
                            disable_pbar=True, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    res = {}
    for name, m in (("plain", model), ("reference", patched)):
        run(m)  # warm-up (also loads the model under core's model management)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [run(m) for _ in range(a.repeats)]
        t = statistics.median(times)
        res[name] = {"seconds": round(t, 3), "s_per_frame": round(t / a.frames, 4), "all": [round(x, 3) for x in times],
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda" else None}
    write_result("gpu_wan_realsize" + ("_tiny" if a.tiny else ""), {
        "spec": vars(a), "arch": arch, "device": device.type, "dtype": str(dtype).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "tiny": a.tiny,
        "latent": [lat_t, lat_h, lat_w], "results": res,
        "reference_ratio": round(res["reference"]["seconds"] / res["plain"]["seconds"], 3),
        "reference_passes_per_run": patch.writes / patch.runs, "goal": "<= 1.10 (real size, GPU)"})


if __name__ == "__main__":
    main()
