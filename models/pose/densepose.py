"""DensePose IUV maps from a user-provided TorchScript DensePose model.

Signature (the TorchScript exports ComfyUI users have, e.g. ``densepose_r50_fpn_dl.torchscript``): input a uint8
tensor (3, H, W) RGB; output ``(boxes (N,4) xyxy pixels, coarse_segm (N,2,S,S), fine_segm (N,25,S,S),
u (N,25,S,S), v (N,25,S,S))`` with box-relative fields.

Per person, the fields are resampled bilinearly to the box; the part label is the argmax of the fine segmentation
where the coarse segmentation says "body" (0 = background, 1–24 = parts), and U/V are taken from the label's
channel.  Outputs: the raw IUV map (I/24, U, V in 0..1) and the colour map in the convention the
MagicAnimate/Champ-style ControlNets were trained on through the ComfyUI DensePose preprocessor: value
``I·255/24`` through OpenCV's PARULA colour map inside each person's mask, people drawn in detection order;
``cmap="viridis"`` (MagicAnimate) paints the background viridis-dark (68, 1, 84), ``"parula"`` leaves it black.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import BadInputError, BadModelFileError

N_PARTS = 24


class DensePoseExtractor:
    name = "densepose"

    def __init__(self, path: str, device: str = "cpu"):
        import torch

        if not os.path.isfile(path):
            from ..errors import MissingModelError

            raise MissingModelError("performer_pose", [os.path.basename(path)], [os.path.dirname(path)], "DensePose TorchScript model.")
        try:
            self.model = torch.jit.load(path, map_location=device).eval()
        except Exception as e:  # noqa: BLE001
            raise BadModelFileError(f"Could not load the DensePose TorchScript model {path}: {e}") from e
        self.device, self.path = device, path

    def settings(self) -> str:
        return f"{self.name}:{self.path}"

    def predict(self, frame: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).to(self.device)
        with torch.no_grad():
            out = self.model(x)
        if not isinstance(out, (tuple, list)) or len(out) != 5:
            raise BadModelFileError(f"{self.path} does not have the DensePose signature (boxes, coarse_segm, fine_segm, u, v).")
        return [o.detach().float().cpu() for o in out]

    def __call__(self, frames: np.ndarray, cmap: str = "viridis", callback: Optional[Callable] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(colour maps (F,H,W,3) uint8, IUV (F,H,W,3) float32 with I/24, U, V)."""
        from .extract import check_frames

        if cmap not in ("viridis", "parula"):
            raise BadInputError(f"cmap must be 'viridis' (MagicAnimate) or 'parula'; got {cmap!r}.")
        frames = check_frames(frames)
        F_, H, W, _ = frames.shape
        colour = np.zeros((F_, H, W, 3), np.uint8)
        iuv = np.zeros((F_, H, W, 3), np.float32)
        for f in range(F_):
            boxes, coarse, fine, u, v = self.predict(frames[f])
            for i in range(boxes.shape[0]):
                _draw_instance(colour[f], iuv[f], boxes[i], coarse[i:i + 1], fine[i:i + 1], u[i:i + 1], v[i:i + 1])
            if cmap == "viridis":
                for c, val in enumerate((68, 1, 84)):
                    ch = colour[f, ..., c]
                    ch[ch == 0] = val
            if callback:
                callback(f + 1, F_)
        return colour, iuv


def _draw_instance(colour, iuv, box, coarse, fine, u, v):
    import cv2
    import torch
    import torch.nn.functional as F

    H, W = colour.shape[:2]
    x0, y0, x1, y1 = box.tolist()
    x, y, w, h = int(x0), int(y0), int(x1 - x0), int(y1 - y0)
    if w <= 0 or h <= 0:
        return
    up = lambda t: F.interpolate(t, (h, w), mode="bilinear", align_corners=False)  # noqa: E731
    labels = (up(fine).argmax(1) * (up(coarse).argmax(1) > 0).long())[0]
    ub, vb = up(u)[0], up(v)[0]
    uu = torch.zeros(h, w)
    vv = torch.zeros(h, w)
    for part in range(1, ub.shape[0]):
        m = labels == part
        uu[m], vv[m] = ub[part][m], vb[part][m]
    lab = labels.numpy().astype(np.uint8)
    val = np.clip(lab.astype(np.float32) * (255.0 / N_PARTS), 0, 255).astype(np.uint8)
    vis = cv2.cvtColor(cv2.applyColorMap(val, cv2.COLORMAP_PARULA), cv2.COLOR_BGR2RGB)
    # clip the box to the frame
    xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if xa >= xb or ya >= yb:
        return
    sl = (slice(ya - y, yb - y), slice(xa - x, xb - x))
    m = lab[sl] > 0
    tgt = colour[ya:yb, xa:xb]
    tgt[m] = vis[sl][m]
    it = iuv[ya:yb, xa:xb]
    it[m] = np.stack([lab[sl] / N_PARTS, uu.numpy()[sl], vv.numpy()[sl]], -1)[m]
