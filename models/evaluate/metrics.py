"""Video metrics against ground truth (the synthetic performer or any reference video).

Conventions (stated because the TikTok-protocol code differs, see research notes §6):

* ``psnr`` — per frame on 0–255, float64 MSE over all pixels and channels, ``20·log10(255/√MSE)``, 100 when equal;
  averaged over frames (the DisCo formula).
* ``ssim`` — skimage SSIM on grey-scale (ITU-R 601 luma), default 7-px window, per frame then averaged (DisCo).
* ``l1`` — mean absolute error on 0–1 over all pixels and channels (a standard mean L1; DisCo's "L1" additionally
  divides by H·W, which is why TikTok tables show ~1e-4; we report that too as ``l1_disco``).
* ``mask_iou`` — IoU of foreground masks (predicted mask = pixels that differ from the known background by more
  than ``bg_threshold``, unless a predicted mask is given) against the ground-truth mask, averaged over frames;
  reported when the ground-truth mask and either the predicted mask or the background are given.
* ``face_psnr`` — PSNR inside the ground-truth face box (from the 68 face keypoints, else the head keypoints) + margin.
* ``warp_error`` — mean |frame_n − warp(frame_{n+1}, true flow)| on valid flow pixels (temporal consistency),
  with ``warp_error_gt`` for the ground truth itself as the floor.
* ``flicker`` — mean |Δframe − Δframe_gt| between consecutive frames over all pixels (0–1).
* ``part_colour`` — identity: for each body part (shirt, trousers, skin, hair; the generator knows each pixel's
  material), the distance between the mean colour of the generated pixels and of the true pixels inside the true
  region, Euclidean on RGB 0–1, averaged over parts present and frames (``part_colour_<part>`` per part).  Plain
  sampling cannot know an unseen identity's colours; only the reference can give them.
* ``flow_epe`` — motion fidelity: optical flow estimated on the generated video (OpenCV DIS, medium preset, on grey
  frames) against the true flow, mean end-point error in pixels over the person (true mask ∧ valid flow).  A frozen
  video's estimated flow is ~0, so it scores the mean true motion, badly; ``flow_epe_gt`` is the same estimator on
  the ground-truth frames (the estimator's own floor).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from ..common import to_uint8 as _u8
from ..errors import BadInputError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(20 * np.log10(255.0 / np.sqrt(mse)))


def _grey(x):
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).astype(np.float64)


def face_box(keypoints: np.ndarray, h: int, w: int, margin: float = 0.15):
    face = keypoints[23:91]
    vis = face[:, 2] > 0.3
    pts = face[vis, :2] if vis.sum() >= 5 else keypoints[:5][keypoints[:5, 2] > 0.3, :2]
    if len(pts) < 2:
        return None
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    m = margin * max(x1 - x0, y1 - y0, 4)
    x0, y0, x1, y1 = int(max(0, x0 - m)), int(max(0, y0 - m)), int(min(w, np.ceil(x1 + m))), int(min(h, np.ceil(y1 + m)))
    return (y0, y1, x0, x1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def warp_error(frames, flow, valid) -> float:
    """Mean |frame_n − frame_{n+1} warped back with the flow (pixels)| over valid pixels, on a 0–1 scale (uint8 frames
    are divided by 255; float frames are taken as 0–1).  Arrays or CPU tensors."""
    import cv2

    scale = 255.0 if getattr(frames, "dtype", None) == np.uint8 else 1.0
    frames, flow, valid = (np.asarray(x.detach().cpu() if hasattr(x, "detach") else x) for x in (frames, flow, valid))
    F_, H, W, _ = frames.shape
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    errs = []
    for n in range(min(F_ - 1, len(flow))):
        back = cv2.remap(frames[n + 1].astype(np.float32), gx + flow[n, ..., 0].astype(np.float32),
                         gy + flow[n, ..., 1].astype(np.float32), cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        v = valid[n].astype(bool)
        if v.any():
            errs.append(np.abs(back[v] - frames[n].astype(np.float32)[v]).mean() / scale)
    return float(np.mean(errs)) if errs else float("nan")


def part_colour(pred, gt, material, parts=None) -> Dict[str, float]:
    """Mean-colour distance per body part (see the module doc); ``material`` (F, H, W) holds the generator's material
    index per pixel (−1 = background)."""
    from .performer import PARTS

    p, g = _u8(pred).astype(np.float64) / 255.0, _u8(gt).astype(np.float64) / 255.0
    material = np.asarray(material)
    if material.shape != p.shape[:3]:
        raise BadInputError(f"The part map has shape {material.shape}; the videos have {p.shape[:3]} frames×pixels.")
    out, per_frame = {}, []
    for name, mats in (parts or PARTS).items():
        vals = []
        for f in range(p.shape[0]):
            m = np.isin(material[f], mats)
            if m.sum() >= 4:
                vals.append(float(np.linalg.norm(p[f][m].mean(0) - g[f][m].mean(0))))
        if vals:
            out[f"part_colour_{name}"] = float(np.mean(vals))
            per_frame.append(out[f"part_colour_{name}"])
    if per_frame:
        out["part_colour"] = float(np.mean(per_frame))
    return out


def estimated_flow(frames) -> np.ndarray:
    """Optical flow n → n+1 of a video (F, H, W, 3) by OpenCV's DIS estimator (medium preset): (F−1, H, W, 2)."""
    import cv2

    v = _u8(frames)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in v]
    return np.stack([dis.calc(grey[n], grey[n + 1], None) for n in range(len(v) - 1)]) if len(v) > 1 else \
        np.zeros((0, *v.shape[1:3], 2), np.float32)


def flow_epe(frames, flow, valid, mask) -> float:
    """Mean end-point error (pixels) of the estimated flow of ``frames`` against the true ``flow`` over the person."""
    est = estimated_flow(frames)
    flow, valid, mask = np.asarray(flow), np.asarray(valid).astype(bool), np.asarray(mask).astype(bool)
    n = min(len(est), len(flow))
    errs = []
    for i in range(n):
        m = valid[i] & mask[i]
        if m.any():
            errs.append(float(np.linalg.norm(est[i][m] - flow[i][m], axis=-1).mean()))
    return float(np.mean(errs)) if errs else float("nan")


def compute(pred, gt, gt_mask=None, background=None, pred_mask=None, keypoints=None, flow=None, valid=None,
            bg_threshold: int = 12, material=None) -> Dict[str, float]:
    """Metrics of ``pred`` against ``gt`` (both (F, H, W, 3), uint8 or 0..1).  Optional ground truth enables more."""
    from skimage.metrics import structural_similarity

    p, g = _u8(pred), _u8(gt)
    if p.shape != g.shape:
        raise BadInputError(f"The generated video has shape {p.shape} but the ground truth has {g.shape}; they must match.")
    if p.shape[0] == 0:
        raise BadInputError("The videos are empty.")
    F_, H, W, _ = p.shape
    out: Dict[str, float] = {"frames": F_, "height": H, "width": W}
    out["psnr"] = float(np.mean([psnr(p[i], g[i]) for i in range(F_)]))
    out["ssim"] = float(np.mean([structural_similarity(_grey(p[i]), _grey(g[i]), data_range=255.0) for i in range(F_)]))
    l1 = np.abs(p.astype(np.float64) - g.astype(np.float64)).mean() / 255.0
    out["l1"] = float(l1)
    out["l1_disco"] = float(np.mean([np.abs(p[i].astype(np.float64) - g[i].astype(np.float64)).mean() / 255.0 / (H * W) * 255
                                     for i in range(F_)]))
    if gt_mask is not None and (pred_mask is not None or background is not None):  # IoU needs a predicted mask
        gm = np.asarray(gt_mask).astype(bool)
        if pred_mask is None:
            pm = np.abs(p.astype(np.int16) - _u8(background)[None].astype(np.int16)).max(-1) > bg_threshold
        else:
            pm = np.asarray(pred_mask).astype(bool)
        inter = (pm & gm).sum((1, 2))
        union = (pm | gm).sum((1, 2))
        out["mask_iou"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    if keypoints is not None:
        vals = []
        for i in range(F_):
            b = face_box(keypoints[i], H, W)
            if b is not None:
                y0, y1, x0, x1 = b
                vals.append(psnr(p[i, y0:y1, x0:x1], g[i, y0:y1, x0:x1]))
        if vals:
            out["face_psnr"] = float(np.mean(vals))
    if flow is not None and valid is not None and F_ > 1:
        out["warp_error"] = warp_error(p, flow, valid)
        out["warp_error_gt"] = warp_error(g, flow, valid)
        if gt_mask is not None:
            out["flow_epe"] = flow_epe(p, flow, valid, gt_mask)
            out["flow_epe_gt"] = flow_epe(g, flow, valid, gt_mask)
    if material is not None:
        out.update(part_colour(p, g, material))
    if F_ > 1:
        dp = np.diff(p.astype(np.float64), axis=0) / 255.0
        dg = np.diff(g.astype(np.float64), axis=0) / 255.0
        out["flicker"] = float(np.abs(dp - dg).mean())
    return out


def contact_sheet(rows: Dict[str, np.ndarray], max_frames: int = 8) -> np.ndarray:
    """Rows of frames (name -> (F, H, W, 3)) side by side, one row per video, with the row name written in."""
    import cv2

    lines = []
    for name, v in rows.items():
        v = _u8(v)[:max_frames]
        strip = np.concatenate(list(v), 1).copy()
        cv2.putText(strip, name[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(strip)
    w = max(s.shape[1] for s in lines)
    return np.concatenate([np.pad(s, ((0, 0), (0, w - s.shape[1]), (0, 0))) for s in lines], 0)


def write(metrics: Dict[str, float], path: str, sheet: Optional[np.ndarray] = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(metrics, fh, indent=2)
    if sheet is not None:
        from PIL import Image

        Image.fromarray(sheet).save(os.path.splitext(path)[0] + ".png")


def _load_dir(path: str) -> np.ndarray:
    from PIL import Image

    files = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
    if not files:
        raise BadInputError(f"No image files in {path}.")
    return np.stack([np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in files])


def main(argv=None):
    """``python -m models.evaluate.metrics --pred DIR --gt DIR [--gt-mask DIR] [--out metrics.json]``"""
    import argparse

    ap = argparse.ArgumentParser(description="Video metrics (PSNR, SSIM, L1, mask IoU) of generated frames against ground truth.")
    ap.add_argument("--pred", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--gt-mask", default="", help="folder of ground-truth mask images (white = person)")
    ap.add_argument("--pred-mask", default="")
    ap.add_argument("--out", default="metrics.json")
    a = ap.parse_args(argv)
    pred, gt = _load_dir(a.pred), _load_dir(a.gt)
    gm = _load_dir(a.gt_mask)[..., 0] > 127 if a.gt_mask else None
    pm = _load_dir(a.pred_mask)[..., 0] > 127 if a.pred_mask else None
    if gm is not None and pm is None:
        print("note: mask IoU needs --pred-mask as well; skipped")
    m = compute(pred, gt, gt_mask=gm if pm is not None else None, pred_mask=pm)
    write(m, a.out, contact_sheet({"generated": pred, "ground truth": gt}))
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
