"""Shared set-up for the benchmarks: the repo's tiny real models (built once into out/bench-models)."""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))


def setup(models: bool = True):
    """Register the pack, set the thread count; with ``models`` also build (once) and return the tiny models tree."""
    import torch

    import pack_alias

    pack_alias.register_package()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    import tiny_models

    tiny_models.ensure_comfy_importable()
    if not models:
        return {}
    root = os.path.join(REPO, "out", "bench-models")
    stamp = os.path.join(root, "paths.json")
    if not os.path.exists(stamp):
        paths = tiny_models.build_models_tree(root)
        with open(stamp, "w") as f:
            json.dump(paths, f)
    with open(stamp) as f:
        paths = json.load(f)
    paths = {k: os.path.join(root, v) for k, v in paths.items()}
    paths["tokenizer"] = os.path.join(tiny_models.COMFY_DIR, "comfy", "sd1_tokenizer")
    return paths


def trained_with(models: str) -> dict:
    """How a demo model folder (scripts/train_demo_models.py) was trained, from its train_log.json: the reference's own
    pose (``reference_pose``) and SMPL-X render (``reference_render``) and the kind of SMPL-X render
    (``smplx_render``); a log without those keys is from before the options existed (off, off, normal)."""
    path = os.path.join(models, "train_log.json")
    log = {}
    if os.path.isfile(path):
        with open(path) as fh:
            log = json.load(fh)
    return {"reference_pose": bool(log.get("reference_pose", False)),
            "reference_render": bool(log.get("reference_render", False)),
            "smplx_render": log.get("smplx_render", "normal")}


def write_result(name: str, result: dict) -> str:
    out = os.environ.get("BENCH_OUT") or os.path.join(REPO, "out", "benchmarks")  # BENCH_OUT: the smoke tests' folder
    os.makedirs(out, exist_ok=True)
    p = os.path.join(out, f"{name}.json")
    with open(p, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return p


def interleaved_medians(run, first, second, repeats: int):
    """Median seconds of ``run(first)`` and ``run(second)`` after one warm-up each, the two arms interleaved so drift in
    machine load hits both alike."""
    import statistics

    run(first), run(second)
    a, b = [], []
    for _ in range(repeats):
        a.append(run(first))
        b.append(run(second))
    return statistics.median(a), statistics.median(b)
