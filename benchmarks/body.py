"""Body layer throughput on this CPU: renders (normal + semantic + depth + mask) and 3D-aware human flow in
frames/s at 512², and SMPL-X fitting time per frame (embedded body model, 200 iterations, 16 frames).

    .venv/bin/python benchmarks/body.py [--size 512 --frames 16 --iters 200]

Renders use pyrender on Mesa's software EGL here (a GPU machine renders with its driver).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--iters", type=int, default=200)
    a = ap.parse_args()
    setup()
    import torch

    from performer_pkg.models.body import smplx as B
    from performer_pkg.models.body.fit import body_to_pose, fit_to_keypoints
    from performer_pkg.models.body.render import Renderer, human_flow, part_labels

    bm = B.get_body_model()
    cam = B.Camera.default(a.size, a.size)
    seq = B.upright(a.frames, cam, bm)
    t = np.linspace(0, 2 * np.pi, a.frames)
    seq.body_pose[:, 3 * 17 + 2] = -0.9 + 0.5 * np.sin(t)
    seq.body_pose[:, 3 * 16 + 2] = 0.9 - 0.5 * np.sin(t)
    seq.body_pose[:, 3 * 3 + 0] = 0.4 + 0.3 * np.sin(t)
    seq.transl[:, 0] += 0.1 * np.sin(t)
    with torch.no_grad():
        V = bm.forward(seq)["vertices"].numpy().astype(np.float64)
    parts = part_labels(bm.weights)
    r = Renderer(a.size, a.size)
    r.render(cam, V[0], bm.faces, parts)  # warm-up (context, shaders)
    t0 = time.perf_counter()
    outs = [r.render(cam, V[f], bm.faces, parts) for f in range(a.frames)]
    render_fps = a.frames / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids = [r.render(cam, V[f], bm.faces, kinds=("face_id",)) for f in range(a.frames)]
    for f in range(a.frames - 1):
        human_flow(cam, V[f], V[f + 1], bm.faces, ids[f]["face_id"], ids[f + 1]["depth"])
    flow_fps = (a.frames - 1) / (time.perf_counter() - t0)
    r.close()
    kp = body_to_pose(seq, bm)
    t0 = time.perf_counter()
    fit = fit_to_keypoints(kp, bm, iters=a.iters)
    fit_s = (time.perf_counter() - t0) / a.frames
    write_result("body", {"size": a.size, "frames": a.frames, "vertices": int(V.shape[1]), "faces": int(len(bm.faces)),
                          "render_fps_normal_semantic_depth_mask": round(render_fps, 2),
                          "flow_fps_including_id_renders": round(flow_fps, 2),
                          "fit_seconds_per_frame": round(fit_s, 3), "fit_iterations": a.iters,
                          "fit_mean_px_error": round(fit.info["fit_mean_px_error"], 2),
                          "foreground_fraction": round(float(np.mean([o["mask"].mean() for o in outs])), 3)})


if __name__ == "__main__":
    main()
