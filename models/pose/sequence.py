"""The pack's pose sequence type (``PERFORMER_POSE``), OpenPose-JSON conversion, skeleton maps, landmarks.

Layout: COCO-WholeBody-133, as DWPose emits it, per frame and person, ``(x, y, confidence)`` in pixels of
the canvas::

    0–16   body (COCO-17: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles; left before right)
    17–22  feet (left big toe, left small toe, left heel, right big toe, right small toe, right heel)
    23–90  face (68 iBUG landmarks)
    91–111 left hand (21)      112–132 right hand (21)

An absent point has confidence 0 (and x = y = 0).  Frames with fewer people are padded with absent people.

OpenPose JSON (what comfyui_controlnet_aux's DWPose/OpenPose nodes emit as ``POSE_KEYPOINT``): a list of frames
``{"people": [{"pose_keypoints_2d": 18×3, "face_keypoints_2d": 70×3, "hand_left_keypoints_2d": 21×3,
"hand_right_keypoints_2d": 21×3}], "canvas_width", "canvas_height"}``.  The body is OpenPose-18 (neck =
mid-shoulder, dropped again on import); face points 68–69 (pupils) are written absent.  Coordinates may be
pixels or normalised 0..1 (both occur in the wild; detected on import).  We also write the feet under
``"foot_keypoints_2d"`` and fps under ``"fps"`` so our own round trip is lossless; readers ignore them.
"""
from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import BadInputError

N_POINTS = 133
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LHAND = slice(91, 112)
RHAND = slice(112, 133)

# OpenPose-18 index -> COCO-17 index (None = neck, the mid-shoulder point)
OP18_FROM_COCO = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
# The ControlNet/DWPose drawing convention (controlnet_aux.dwpose.util.draw_bodypose), 1-based OpenPose-18 pairs.
LIMBS_OP18 = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
              [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
COLOURS_OP18 = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
                [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
                [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11], [11, 12],
              [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]
EPS = 0.01  # the convention's "absent" threshold on normalised coordinates


@dataclass
class PoseSequence:
    """``keypoints``: float32 (frames, people, 133, 3) = x, y in pixels, confidence."""

    keypoints: np.ndarray
    width: int
    height: int
    fps: float = 8.0

    def __post_init__(self):
        k = np.asarray(self.keypoints, dtype=np.float32)
        if k.ndim != 4 or k.shape[2:] != (N_POINTS, 3):
            raise BadInputError(f"pose keypoints must have shape (frames, people, 133, 3); got {k.shape}.")
        if not np.isfinite(k).all():
            raise BadInputError("pose keypoints contain NaN or infinite values.")
        if self.width <= 0 or self.height <= 0:
            raise BadInputError(f"pose canvas must have a positive size; got {self.width}×{self.height}.")
        self.keypoints = k

    @property
    def frames(self) -> int:
        return self.keypoints.shape[0]

    @property
    def people(self) -> int:
        return self.keypoints.shape[1]

    def visible(self, threshold: float = 0.3) -> np.ndarray:
        return self.keypoints[..., 2] > threshold

    def person_present(self, threshold: float = 0.3) -> np.ndarray:
        """(frames, people) — a person counts as present with at least 4 visible body points."""
        return self.visible(threshold)[..., BODY].sum(-1) >= 4

    def copy(self, **kw) -> "PoseSequence":
        d = dict(keypoints=self.keypoints.copy(), width=self.width, height=self.height, fps=self.fps)
        d.update(kw)
        return PoseSequence(**d)


def frame_range(pose: PoseSequence, start: int, length: int = 0, multiple: str = "any") -> PoseSequence:
    """Frames ``start`` … ``start + length − 1`` of ``pose`` (``length`` 0: to the end), shortened to the longest count of
    the form ``4k + 1`` when ``multiple`` is ``"4k+1"`` (Wan's VAE turns 4k + 1 frames into k + 1 latent frames)."""
    if start < 0 or start >= pose.frames:
        raise BadInputError(f"start: frame {start} does not exist; the pose sequence has {pose.frames} frames (0 … {pose.frames - 1}).")
    if length < 0:
        raise BadInputError(f"length must be >= 0 (0 = to the end); got {length}.")
    n = pose.frames - start if length == 0 else min(length, pose.frames - start)
    if multiple == "4k+1":
        n = (n - 1) // 4 * 4 + 1
    elif multiple != "any":
        raise BadInputError(f"multiple must be 'any' or '4k+1'; got {multiple!r}.")
    return pose.copy(keypoints=pose.keypoints[start:start + n].copy())


def empty(frames: int, width: int, height: int, people: int = 1, fps: float = 8.0) -> PoseSequence:
    return PoseSequence(np.zeros((frames, people, N_POINTS, 3), np.float32), width, height, fps)


# ----------------------------------------------------------------------------- OpenPose JSON


def _flat(points: np.ndarray, scale: np.ndarray) -> List[float]:
    p = points.copy()
    p[:, :2] = p[:, :2] * scale
    p[p[:, 2] <= 0] = 0
    return [float(v) for v in p.reshape(-1)]


def to_openpose(pose: PoseSequence, normalised: bool = False) -> List[Dict]:
    scale = np.array([1 / pose.width, 1 / pose.height], np.float32) if normalised else np.ones(2, np.float32)
    out = []
    for f in range(pose.frames):
        people = []
        for p in range(pose.people):
            k = pose.keypoints[f, p]
            if not (k[:, 2] > 0).any():
                continue
            body = np.zeros((18, 3), np.float32)
            for i, c in enumerate(OP18_FROM_COCO):
                if c is not None:
                    body[i] = k[c]
            if k[5, 2] > 0 and k[6, 2] > 0:
                body[1] = [(k[5, 0] + k[6, 0]) / 2, (k[5, 1] + k[6, 1]) / 2, min(k[5, 2], k[6, 2])]
            face = np.zeros((70, 3), np.float32)
            face[:68] = k[FACE]
            people.append({"pose_keypoints_2d": _flat(body, scale), "face_keypoints_2d": _flat(face, scale),
                           "hand_left_keypoints_2d": _flat(k[LHAND], scale), "hand_right_keypoints_2d": _flat(k[RHAND], scale),
                           "foot_keypoints_2d": _flat(k[FEET], scale)})
        out.append({"people": people, "canvas_width": int(pose.width), "canvas_height": int(pose.height), "fps": float(pose.fps)})
    return out


def _points(person: Dict, key: str, n: int, what: str) -> Optional[np.ndarray]:
    v = person.get(key)
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    if a.size % 3 or a.size // 3 < n:
        raise BadInputError(f"{what}: '{key}' has {a.size} numbers; expected {n}×3 (x, y, confidence).")
    return a.reshape(-1, 3)[:n]


def from_openpose(frames: Sequence[Dict], width: Optional[int] = None, height: Optional[int] = None,
                  fps: Optional[float] = None) -> PoseSequence:
    """Read OpenPose JSON frames (``POSE_KEYPOINT``); pixel or normalised coordinates are both accepted."""
    if isinstance(frames, dict):
        frames = [frames]
    if not frames:
        raise BadInputError("The OpenPose JSON has no frames.")
    w = width or int(frames[0].get("canvas_width") or 0)
    h = height or int(frames[0].get("canvas_height") or 0)
    if w <= 0 or h <= 0:
        raise BadInputError("The OpenPose JSON has no canvas_width/canvas_height; give the canvas size.")
    maxp = max(1, max(len(fr.get("people") or []) for fr in frames))
    k = np.zeros((len(frames), maxp, N_POINTS, 3), np.float32)
    coords = []
    for fi, fr in enumerate(frames):
        for pi, person in enumerate(fr.get("people") or []):
            what = f"frame {fi}, person {pi}"
            body = _points(person, "pose_keypoints_2d", 18, what)
            if body is not None:
                for i, c in enumerate(OP18_FROM_COCO):
                    if c is not None:
                        k[fi, pi, c] = body[i]
            for key, sl, n in (("face_keypoints_2d", FACE, 68), ("hand_left_keypoints_2d", LHAND, 21),
                               ("hand_right_keypoints_2d", RHAND, 21), ("foot_keypoints_2d", FEET, 6)):
                pts = _points(person, key, n, what)
                if pts is not None:
                    k[fi, pi, sl] = pts
            vis = k[fi, pi, :, 2] > 0
            coords.append(k[fi, pi, vis, :2].reshape(-1))
    allc = np.concatenate(coords) if coords else np.zeros(0)
    if allc.size and allc.max() <= 1.5:  # normalised coordinates
        k[..., 0] *= w
        k[..., 1] *= h
    k[k[..., 2] <= 0] = 0
    return PoseSequence(k, w, h, float(fps or frames[0].get("fps") or 8.0))


def save_json(pose: PoseSequence, path: str) -> None:
    import os
    import tempfile

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(to_openpose(pose), fh)
        os.replace(tmp, path)  # nothing half-written
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_json(path: str) -> PoseSequence:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInputError(f"Could not read pose JSON {path}: {e}") from e
    return from_openpose(data)


# ----------------------------------------------------------------------------- drawing


def _hand_colour(i: int) -> List[float]:
    return [c * 255 for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)]


def draw_frame(k: np.ndarray, width: int, height: int, src_w: int, src_h: int, body: bool = True, hands: bool = True,
               face: bool = True, stick_width: int = 4, threshold: float = 0.3) -> np.ndarray:
    """One frame ``k`` (people, 133, 3) in the ControlNet/DWPose convention, uint8 RGB (height, width, 3).

    Same arithmetic as ``controlnet_aux.dwpose.util`` (normalised coordinates × canvas size, truncation to int,
    limbs as ellipses then the canvas × 0.6, joints as radius-4 discs, hands as HSV-coloured 2-px lines with
    red joints, face as white radius-3 dots); ``stick_width`` and the joint radius scale only when changed."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    W, H = float(width), float(height)
    norm = np.array([1.0 / src_w, 1.0 / src_h], np.float64)
    people = []
    for p in range(k.shape[0]):
        pts = k[p].astype(np.float64)
        xy = pts[:, :2] * norm
        vis = pts[:, 2] > threshold
        people.append((xy, vis))
    if body:
        op = []
        for xy, vis in people:
            b = np.full((18, 2), np.nan)
            for i, c in enumerate(OP18_FROM_COCO):
                if c is not None and vis[c]:
                    b[i] = xy[c]
            if vis[5] and vis[6]:
                b[1] = (xy[5] + xy[6]) / 2
            op.append(b)
        for i in range(17):
            for b in op:
                a, c = LIMBS_OP18[i][0] - 1, LIMBS_OP18[i][1] - 1
                if np.isnan(b[a]).any() or np.isnan(b[c]).any():
                    continue
                Y = np.array([b[a, 0], b[c, 0]]) * W
                X = np.array([b[a, 1], b[c, 1]]) * H
                length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
                angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
                poly = cv2.ellipse2Poly((int(np.mean(Y)), int(np.mean(X))), (int(length / 2), int(stick_width)), int(angle), 0, 360, 1)
                cv2.fillConvexPoly(canvas, poly, COLOURS_OP18[i])
        canvas = (canvas * 0.6).astype(np.uint8)
        r = 4 if stick_width == 4 else max(1, int(round(stick_width)))
        for i in range(18):
            for b in op:
                if np.isnan(b[i]).any():
                    continue
                cv2.circle(canvas, (int(b[i, 0] * W), int(b[i, 1] * H)), r, COLOURS_OP18[i], thickness=-1)
    if hands:
        for xy, vis in people:
            for sl in (LHAND, RHAND):
                h_xy, h_vis = xy[sl], vis[sl]
                if not h_vis.any():
                    continue
                for ie, (a, c) in enumerate(HAND_EDGES):
                    if not (h_vis[a] and h_vis[c]):
                        continue
                    x1, y1 = int(h_xy[a, 0] * W), int(h_xy[a, 1] * H)
                    x2, y2 = int(h_xy[c, 0] * W), int(h_xy[c, 1] * H)
                    if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                        cv2.line(canvas, (x1, y1), (x2, y2), _hand_colour(ie), thickness=2)
                for j in range(21):
                    if h_vis[j]:
                        x, y = int(h_xy[j, 0] * W), int(h_xy[j, 1] * H)
                        if x > EPS and y > EPS:
                            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    if face:
        for xy, vis in people:
            for j in range(FACE.start, FACE.stop):
                if vis[j]:
                    x, y = int(xy[j, 0] * W), int(xy[j, 1] * H)
                    if x > EPS and y > EPS:
                        cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)
    return canvas


def draw(pose: PoseSequence, width: Optional[int] = None, height: Optional[int] = None, callback=None, **kw) -> np.ndarray:
    """Skeleton maps (frames, height, width, 3) uint8 at any resolution (default: the pose canvas).
    ``callback(done, total)`` is called after each frame (progress / interruption)."""
    w, h = width or pose.width, height or pose.height
    out = np.zeros((pose.frames, h, w, 3), np.uint8)
    for f in range(pose.frames):
        out[f] = draw_frame(pose.keypoints[f], w, h, pose.width, pose.height, **kw)
        if callback:
            callback(f + 1, pose.frames)
    return out


# ----------------------------------------------------------------------------- landmarks


def landmarks(pose: PoseSequence, part: str, frame: int, person: int = 0, threshold: float = 0.3) -> np.ndarray:
    """(n, 3) landmarks of ``part``: "face" (68), "left_hand"/"right_hand" (21), "body" (17), "feet" (6),
    or "face5" (eye centres, nose tip, mouth corners — the ArcFace alignment points).  Invisible points have
    confidence 0."""
    if not 0 <= frame < pose.frames or not 0 <= person < pose.people:
        raise BadInputError(f"frame {frame} / person {person} is outside the pose sequence ({pose.frames} frames, {pose.people} people).")
    k = pose.keypoints[frame, person].copy()
    k[k[:, 2] <= threshold] = 0
    parts = {"face": FACE, "left_hand": LHAND, "right_hand": RHAND, "body": BODY, "feet": FEET}
    if part in parts:
        return k[parts[part]]
    if part == "face5":
        f = k[FACE]
        out = np.zeros((5, 3), np.float32)
        for i, idx in enumerate((range(36, 42), range(42, 48))):
            e = f[list(idx)]
            if (e[:, 2] > 0).all():
                out[i] = [e[:, 0].mean(), e[:, 1].mean(), e[:, 2].min()]
        out[2], out[3], out[4] = f[30], f[48], f[54]
        # image-left eye first, as the ArcFace template expects
        if out[0, 2] > 0 and out[1, 2] > 0 and out[0, 0] > out[1, 0]:
            out[[0, 1]] = out[[1, 0]]
            out[[3, 4]] = out[[4, 3]]
        return out
    raise BadInputError(f"Unknown landmark part {part!r}; use face, face5, left_hand, right_hand, body or feet.")


def nearest_frame(train: PoseSequence, target: PoseSequence, threshold: float = 0.3, person: int = 0) -> int:
    """PoseCrafter's reference-frame choice: the training frame whose pose is nearest to the target poses.

    Body points are normalised per frame (centred on the mean of visible torso points, scaled by the torso
    size), and distances use only joints visible in both frames; the score is the mean over target frames."""
    if train.frames == 0 or target.frames == 0:
        raise BadInputError("Reference-frame selection needs at least one training and one target frame.")

    def norm(ps: PoseSequence):
        k = ps.keypoints[:, person, BODY]
        vis = k[..., 2] > threshold
        out = np.zeros(k.shape[:2] + (2,), np.float64)
        for f in range(k.shape[0]):
            v = vis[f]
            if v.sum() < 2:
                continue
            torso = [i for i in (5, 6, 11, 12) if v[i]]
            ref = torso if len(torso) >= 2 else list(np.where(v)[0])
            c = k[f, ref, :2].mean(0)
            s = np.sqrt(((k[f, v, :2] - c) ** 2).sum(-1).mean()) + 1e-6
            out[f] = (k[f, :, :2] - c) / s
        return out, vis

    a, va = norm(train)
    b, vb = norm(target)
    best, best_d = -1, np.inf
    for i in range(train.frames):
        ds = []
        for j in range(target.frames):
            both = va[i] & vb[j]
            if both.sum() >= 2:
                ds.append(np.linalg.norm(a[i, both] - b[j, both], axis=-1).mean())
        if ds and np.mean(ds) < best_d:
            best, best_d = i, float(np.mean(ds))
    if best < 0:
        raise BadInputError("No training frame shares at least two visible joints with the target poses.")
    return best


# ----------------------------------------------------------------------------- temporal clean-up


def fill_gaps(pose: PoseSequence, max_gap: int = 4, threshold: float = 0.3) -> PoseSequence:
    """Linearly interpolate points missing for at most ``max_gap`` frames between two frames where they are
    visible (a person briefly not detected).  Filled points get the lower of the two confidences."""
    k = pose.keypoints.copy()
    vis = k[..., 2] > threshold
    for p in range(k.shape[1]):
        for j in range(N_POINTS):
            idx = np.where(vis[:, p, j])[0]
            for a, b in zip(idx[:-1], idx[1:]):
                gap = b - a - 1
                if 0 < gap <= max_gap:
                    t = (np.arange(a + 1, b) - a) / (b - a)
                    k[a + 1:b, p, j, :2] = k[a, p, j, :2] + t[:, None] * (k[b, p, j, :2] - k[a, p, j, :2])
                    k[a + 1:b, p, j, 2] = min(k[a, p, j, 2], k[b, p, j, 2])
    return pose.copy(keypoints=k)


def one_euro(pose: PoseSequence, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0,
             threshold: float = 0.3) -> PoseSequence:
    """One-euro filter (Casiez et al. 2012) on every visible point track, at the sequence's fps.  Jitter at low
    speed is smoothed strongly (``min_cutoff`` Hz), fast motion follows with little lag (``beta``).  A track
    restarts after a missing frame."""
    k = pose.keypoints.copy()
    vis = k[..., 2] > threshold
    rate = max(float(pose.fps), 1e-3)

    def alpha(cut):
        tau = 1.0 / (2 * math.pi * cut)
        return 1.0 / (1.0 + tau * rate)

    x_prev = np.zeros(k.shape[1:3] + (2,))
    dx_prev = np.zeros_like(x_prev)
    started = np.zeros(k.shape[1:3], bool)
    for f in range(k.shape[0]):
        v = vis[f]
        x = k[f, ..., :2].astype(np.float64)
        dx = np.where(started[..., None], (x - x_prev) * rate, 0.0)
        a_d = alpha(d_cutoff)
        dx_hat = a_d * dx + (1 - a_d) * dx_prev
        cut = min_cutoff + beta * np.linalg.norm(dx_hat, axis=-1)
        tau = 1.0 / (2 * math.pi * cut)
        a = (1.0 / (1.0 + tau * rate))[..., None]
        x_hat = np.where(started[..., None], a * x + (1 - a) * x_prev, x)
        x_hat = np.where(v[..., None], x_hat, 0.0)
        k[f, ..., :2] = np.where(v[..., None], x_hat, k[f, ..., :2])
        x_prev = np.where(v[..., None], x_hat, x_prev)
        dx_prev = np.where(v[..., None], dx_hat, 0.0)
        started = v
    return pose.copy(keypoints=k.astype(np.float32))
