"""Pose extraction throughput (frames/s) on this CPU at 512×512 for each available backend.

    .venv/bin/python benchmarks/pose_extraction.py [--frames 16] [--dwpose-dir DIR]

Input: 16 frames of the real photo ``skimage.data.astronaut()`` drifting sideways (so trackers do work).
* mediapipe — MediaPipe Holistic (video mode, face + hands), the models in the mediapipe 0.10.21 wheel.
* dwpose — the ONNX pair in ``--dwpose-dir`` (``yolox_l.onnx`` + ``dw-ll_ucoco_384.onnx``).  Without real files
  the tiny constant-output ONNX pair of the tests is used: that times only our pre/post-processing and
  onnxruntime overhead, not DWPose's networks, and is labelled so.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from _common import setup, write_result


def frames(n: int) -> np.ndarray:
    import cv2
    import skimage.data

    img = skimage.data.astronaut()
    out = []
    for i in range(n):
        M = np.float32([[1, 0, 3 * i - 24], [0, 1, 0]])
        out.append(cv2.warpAffine(img, M, (512, 512), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def timed(fn, x):
    fn(x[:1])  # warm-up (model load, graph init)
    t = time.perf_counter()
    fn(x)
    return x.shape[0] / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--dwpose-dir", default="")
    ap.add_argument("--openpose-dir", default="")
    a = ap.parse_args()
    setup()
    from performer_pkg.models.pose.extract import DWPoseExtractor, MediaPipeExtractor

    x = frames(a.frames)
    res = {"frames": a.frames, "size": 512, "results": {}}
    try:
        mp = MediaPipeExtractor(video=True)
        res["results"]["mediapipe_holistic"] = {"fps": round(timed(mp, x), 2)}
    except Exception as e:  # noqa: BLE001
        res["results"]["mediapipe_holistic"] = {"skipped": str(e)[:200]}
    d = a.dwpose_dir
    label = "dwpose"
    if not d:
        import tiny_models

        d = tempfile.mkdtemp()
        tiny_models.dwpose_onnx_pair(d, frame_size=512)
        d = os.path.join(d, "performer", "pose")
        label = "dwpose_tiny_onnx_overhead_only"
    dw = DWPoseExtractor(os.path.join(d, "yolox_l.onnx"), os.path.join(d, "dw-ll_ucoco_384.onnx"))
    res["results"][label] = {"fps": round(timed(dw, x), 2)}
    od, olabel = a.openpose_dir, "openpose"
    if not od:
        import torch
        from controlnet_aux.open_pose.model import bodypose_model

        od = tempfile.mkdtemp()
        torch.manual_seed(0)
        torch.save({".".join(k.split(".")[1:]): v for k, v in bodypose_model().state_dict().items()},
                   os.path.join(od, "body_pose_model.pth"))
        olabel = "openpose_body_real_size_random_weights"
    from performer_pkg.models.pose.extract import OpenPoseExtractor

    op = OpenPoseExtractor(od, hands=bool(a.openpose_dir), face=bool(a.openpose_dir))
    res["results"][olabel] = {"fps": round(timed(op, x[:4]), 3)}
    import onnxruntime

    res["onnxruntime_providers"] = onnxruntime.get_available_providers()
    write_result("pose_extraction", res)


if __name__ == "__main__":
    main()
