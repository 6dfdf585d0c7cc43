"""Retarget a driving pose sequence to the body proportions of the person in a reference image.

The body is a tree rooted at the hip midpoint.  For every limb (parent → child) the driving video's limb
vector keeps its direction in every frame and is scaled by ``reference length / typical driving length``
(the driving length's median over the video), so joint angles and 2D foreshortening are kept while the
limb lengths become the reference person's.  Children are re-placed from their new parents, outward from
the hips (or the shoulders, for half-body references).  Face points follow the nose (scaled by the head-size ratio), hands follow the wrists (scaled by
the forearm ratio), feet follow the ankles (shin ratio).

Framing: the reference may come from a photo of another size or framing; its points are first brought to
the driving canvas by the ratio of canvas heights.  ``size="reference"`` keeps the reference person's size
on the canvas; ``size="driving"`` keeps the driving person's overall size (torso length) and changes only
proportions.  The hips are anchored at the reference's hip position, or follow the driving video's motion
(scaled) with ``keep_translation``.  Finally the whole sequence is scaled/shifted as one if needed so every
visible point stays inside the canvas.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import BadInputError
from .sequence import FACE, LHAND, RHAND, PoseSequence

ROOT, NECK = -1, -2  # virtual joints: hip midpoint, shoulder midpoint
# (parent, child) in COCO-17 indices, ordered outward from the hips
LIMBS: List[Tuple[int, int]] = [(ROOT, 11), (ROOT, 12), (ROOT, NECK), (NECK, 5), (NECK, 6), (5, 7), (7, 9), (6, 8), (8, 10),
                                (11, 13), (13, 15), (12, 14), (14, 16), (NECK, 0), (0, 1), (0, 2), (1, 3), (2, 4)]
FOOT_OF = {15: (17, 18, 19), 16: (20, 21, 22)}


def _joints(k: np.ndarray, thr: float) -> Dict[int, Optional[np.ndarray]]:
    """COCO body points + virtual ROOT/NECK for one person (133, 3); None where not visible."""
    vis = k[:, 2] > thr
    j = {i: (k[i, :2].astype(np.float64) if vis[i] else None) for i in range(17)}
    j[ROOT] = (k[11, :2] + k[12, :2]) / 2.0 if vis[11] and vis[12] else None
    j[NECK] = (k[5, :2] + k[6, :2]) / 2.0 if vis[5] and vis[6] else None
    return j


def _length(j, a, b) -> Optional[float]:
    return None if j[a] is None or j[b] is None else float(np.linalg.norm(j[b] - j[a]))


def retarget(driving: PoseSequence, reference: PoseSequence, ref_frame: int = 0, person: int = 0,
             size: str = "reference", keep_translation: bool = True, fit_canvas: bool = True,
             threshold: float = 0.3) -> PoseSequence:
    if driving.frames == 0:
        raise BadInputError("The driving pose sequence is empty.")
    if not 0 <= ref_frame < reference.frames:
        raise BadInputError(f"Reference frame {ref_frame} is outside the reference poses ({reference.frames} frames).")
    if size not in ("reference", "driving"):
        raise BadInputError(f"size must be 'reference' or 'driving'; got {size!r}.")
    rk = reference.keypoints[ref_frame, person].astype(np.float64).copy()
    if (rk[:17, 2] > threshold).sum() < 4:
        raise BadInputError("No person found in the reference pose (fewer than 4 visible body points).")
    rk[:, :2] *= driving.height / reference.height  # bring the reference to the driving canvas
    R = _joints(rk, threshold)
    dk = driving.keypoints[:, person].astype(np.float64)
    frames = [_joints(dk[f], threshold) for f in range(driving.frames)]
    # anchor: the hips when both videos show them, else the shoulders (half-body references are common)
    anchor = None
    for cand in (ROOT, NECK):
        if R[cand] is not None and any(j[cand] is not None for j in frames):
            anchor = cand
            break
    if anchor is None:
        raise BadInputError("The reference pose needs both shoulders or both hips visible (and the driving poses the same) "
                            "to anchor the retargeting.")
    present = [f for f, j in enumerate(frames) if j[anchor] is not None]

    def median_len(a, b):
        ls = [_length(j, a, b) for j in frames]
        ls = [x for x in ls if x]
        return float(np.median(ls)) if ls else None

    glob = None  # reference size / driving size: torso, else shoulder width, else head
    for a, b in ((ROOT, NECK), (5, 6), (3, 4), (1, 2)):
        dl, rl = median_len(a, b), _length(R, a, b)
        if dl and rl:
            glob = rl / dl
            break
    if glob is None:
        raise BadInputError("The reference and driving poses share no torso, shoulder or head measurement to compare sizes.")
    out_scale = 1.0 if size == "reference" else 1.0 / glob
    ratio = {}
    for a, b in LIMBS:
        dl, rl = median_len(a, b), _length(R, a, b)
        ratio[(a, b)] = (rl / dl if dl and rl else glob) * out_scale
    head = _head_ratio(frames, R, glob) * out_scale
    forearm = {9: ratio[(7, 9)], 10: ratio[(8, 10)]}
    shin = {15: ratio[(13, 15)], 16: ratio[(14, 16)]}

    out = np.zeros_like(driving.keypoints)
    a0 = frames[present[0]][anchor]
    for f, J in enumerate(frames):
        if J[anchor] is None:
            continue
        N: Dict[int, Optional[np.ndarray]] = {k: None for k in J}
        N[anchor] = R[anchor] + ((J[anchor] - a0) * glob * out_scale if keep_translation else 0.0)
        changed = True
        while changed:  # place limbs outward from the anchor, in either direction along the tree
            changed = False
            for a, b in LIMBS:
                if J[a] is None or J[b] is None:
                    continue
                if N[a] is not None and N[b] is None:
                    N[b] = N[a] + (J[b] - J[a]) * ratio[(a, b)]
                    changed = True
                elif N[b] is not None and N[a] is None:
                    N[a] = N[b] - (J[b] - J[a]) * ratio[(a, b)]
                    changed = True
        src = driving.keypoints[f, person]
        for i in range(17):
            if N[i] is not None:
                out[f, person, i, :2] = N[i]
                out[f, person, i, 2] = src[i, 2]
        for ankle, feet in FOOT_OF.items():
            _follow(out[f, person], src, list(feet), ankle, J, N, shin[ankle], threshold)
        _follow(out[f, person], src, list(range(FACE.start, FACE.stop)), 0, J, N, head, threshold)
        _follow(out[f, person], src, list(range(LHAND.start, LHAND.stop)), 9, J, N, forearm[9], threshold)
        _follow(out[f, person], src, list(range(RHAND.start, RHAND.stop)), 10, J, N, forearm[10], threshold)
    # other people in the driving video are kept as they are
    for p in range(driving.people):
        if p != person:
            out[:, p] = driving.keypoints[:, p]
    res = driving.copy(keypoints=out.astype(np.float32))
    return fit_to_canvas(res, threshold) if fit_canvas else res


def _head_ratio(frames, R, glob) -> float:
    def size(j):
        pairs = [(3, 4), (1, 2)]
        for a, b in pairs:
            if j[a] is not None and j[b] is not None:
                return float(np.linalg.norm(j[a] - j[b])), (a, b)
        return None, None

    rs, pair = size(R)
    if rs is None:
        return glob
    ds = [float(np.linalg.norm(j[pair[0]] - j[pair[1]])) for j in frames if j[pair[0]] is not None and j[pair[1]] is not None]
    return rs / float(np.median(ds)) if ds else glob


def _follow(dst, src, idx, parent, J, N, scale, thr):
    if J[parent] is None or N[parent] is None:
        return
    for i in idx:
        if src[i, 2] > thr:
            dst[i, :2] = N[parent] + (src[i, :2] - J[parent]) * scale
            dst[i, 2] = src[i, 2]


def fit_to_canvas(pose: PoseSequence, threshold: float = 0.3, margin: float = 0.0) -> PoseSequence:
    """Scale (about the canvas centre) and shift the whole sequence as one so all visible points lie inside."""
    k = pose.keypoints.copy()
    vis = k[..., 2] > threshold
    if not vis.any():
        return pose
    xy = k[..., :2][vis]
    lo, hi = xy.min(0), xy.max(0)
    W, H = pose.width - 1 - margin, pose.height - 1 - margin
    s = min(1.0, (W - margin) / max(hi[0] - lo[0], 1e-6), (H - margin) / max(hi[1] - lo[1], 1e-6))
    c = (lo + hi) / 2
    new_lo, new_hi = c + (lo - c) * s, c + (hi - c) * s
    shift = np.zeros(2)
    shift[0] = max(0.0, margin - new_lo[0]) - max(0.0, new_hi[0] - W)
    shift[1] = max(0.0, margin - new_lo[1]) - max(0.0, new_hi[1] - H)
    k[..., :2] = np.where(vis[..., None], c + (k[..., :2] - c) * s + shift, k[..., :2])
    return pose.copy(keypoints=k)
