"""The synthetic performer: a seeded, textured person on the embedded body, with full ground truth.

``generate(PerformerSpec(seed, character, motion, frames, size))`` renders a person (skin, hair, shirt, trousers,
shoes, eyes and mouth; optionally a striped shirt) over a static procedural background in a procedural motion
(``walk``, ``wave``, ``squat``, ``turn``, ``dance``) and returns, per frame: RGB, mask, body-part labels, whole-body 2D
keypoints (``PoseSequence``), SMPL-X parameters (``BodySequence``) and the true per-pixel flow to the next frame (with
its validity).  Everything is a function of the spec: the same spec gives the same bytes.

Identities have no table: ``character`` is an **identity seed**; skin tone, hair, shirt, stripe and trouser colours,
stripes on/off and the body shape are drawn from it (:func:`identity`).  ``seed`` draws the sequence: background tint
and the motion's phase and amplitude.  Seeds below :data:`EVAL_BASE` are the *training* range, seeds from it up the
*evaluation* range (:func:`split_of`): the demo model trains only on the first, the demo and the benchmark use only the
second, so their identities, backgrounds and motion instances are unseen by construction.

Rendering is split in two: :func:`geometry` renders the posed body once (visible triangle per pixel, per-triangle
shading and material), :func:`colourise` paints any identity's colours on it.  Training uses that to see a new person
at almost every step at the cost of a table look-up.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import BadInputError

MOTIONS = ("walk", "wave", "squat", "turn", "dance")
EVAL_BASE = 1_000_000  # identity and sequence seeds >= this are never used in training
MATERIALS = ("skin", "shirt", "stripe", "trousers", "shoes", "hair", "eyes", "mouth")
# body parts the identity metric compares (material indices that belong to each)
PARTS = {"shirt": (1, 2), "trousers": (3,), "skin": (0,), "hair": (5,)}


@dataclass
class PerformerSpec:
    seed: int = 0
    character: int = 0  # identity seed: colours, stripes and body shape
    motion: str = "wave"
    frames: int = 16
    size: int = 128
    stripes: Optional[bool] = None  # None: drawn from the identity
    fps: float = 8.0


def split_of(seed: int, character: int) -> str:
    """'train' when both seeds are in the training range, 'eval' when both are in the evaluation range, else 'mixed'."""
    tr = seed < EVAL_BASE and character < EVAL_BASE
    ev = seed >= EVAL_BASE and character >= EVAL_BASE
    return "train" if tr else "eval" if ev else "mixed"


def identity(character: int, stripes: Optional[bool] = None) -> Dict[str, object]:
    """The identity drawn from its seed: colours (RGB 0..255 per material), stripes and SMPL-X shape (5 betas)."""
    if character < 0:
        raise BadInputError(f"character (identity seed) must be >= 0; got {character}.")
    r = np.random.default_rng([7, character])
    tone = r.uniform(0, 1)  # continuous skin tone between light and dark
    skin = (1 - tone) * np.array([255, 214, 170]) + tone * np.array([110, 66, 32])
    hair = r.uniform(0, 1) * np.array([150, 110, 70]) + r.integers(5, 40, 3)
    pal = np.stack([skin, r.integers(0, 256, 3), r.integers(0, 256, 3), r.integers(0, 256, 3),
                    np.array([30, 30, 30]), hair, np.array([20, 20, 40]), np.array([150, 40, 50])]).astype(np.float64)
    striped = bool(r.uniform() < 0.5) if stripes is None else bool(stripes)
    if not striped:
        pal[2] = pal[1]
    return {"palette": np.clip(pal, 0, 255), "stripes": striped, "betas": r.normal(0, 0.6, 5)}


def _pose(motion: str, t: np.ndarray, rng) -> Dict[str, np.ndarray]:
    """body_pose (F, 63), yaw (F,), height offset (F,), x offset (F,) for a procedural motion; t in [0, 1)."""
    F = len(t)
    bp = np.zeros((F, 21, 3))
    ph = 2 * np.pi * t
    amp = 1.0 + 0.2 * rng.standard_normal()
    bp[:, 15, 2] = -1.2  # arms down (A-pose) as the resting pose: shoulders (joints 16, 17 -> body_pose 15, 16)
    bp[:, 16, 2] = 1.2
    yaw = np.zeros(F)
    dy = np.zeros(F)
    dx = np.zeros(F)
    if motion == "walk":
        bp[:, 0, 0] = 0.45 * amp * np.sin(ph)  # left hip
        bp[:, 1, 0] = -0.45 * amp * np.sin(ph)
        bp[:, 3, 0] = 0.5 * np.clip(np.sin(ph + 1.0), 0, None)  # knees
        bp[:, 4, 0] = 0.5 * np.clip(-np.sin(ph + 1.0), 0, None)
        bp[:, 15, 0] = -0.4 * np.sin(ph)
        bp[:, 16, 0] = 0.4 * np.sin(ph)
        dx = 0.25 * (t - 0.5)
    elif motion == "wave":
        bp[:, 16, 2] = -0.3 + 0.2 * np.sin(ph)  # right arm up
        bp[:, 18, 1] = 1.0 + 0.6 * amp * np.sin(2 * ph)  # right elbow waves
    elif motion == "squat":
        s = 0.5 - 0.5 * np.cos(ph)
        bp[:, 0, 0] = bp[:, 1, 0] = -1.2 * s * amp
        bp[:, 3, 0] = bp[:, 4, 0] = 2.0 * s * amp
        bp[:, 6, 0] = bp[:, 7, 0] = -0.8 * s
        dy = 0.35 * s
    elif motion == "turn":
        yaw = 1.2 * np.sin(ph) * amp
    elif motion == "dance":
        bp[:, 15, 2] = -0.6 + 0.6 * np.sin(ph)
        bp[:, 16, 2] = 0.6 + 0.6 * np.sin(ph + np.pi / 2)
        bp[:, 17, 1] = -0.8 * np.sin(2 * ph)
        bp[:, 18, 1] = 0.8 * np.sin(2 * ph + 1)
        bp[:, 0, 2] = 0.25 * np.sin(ph)
        bp[:, 1, 2] = -0.25 * np.sin(ph)
        bp[:, 2, 2] = 0.2 * np.sin(2 * ph)
        yaw = 0.4 * np.sin(ph)
        dy = 0.05 * (1 - np.cos(2 * ph))
    else:
        raise BadInputError(f"Unknown motion {motion!r}; choose one of {', '.join(MOTIONS)}.")
    return {"body_pose": bp.reshape(F, 63), "yaw": yaw, "dy": dy, "dx": dx}


def _face_materials(bm) -> np.ndarray:
    """Material index (see MATERIALS) per triangle of the body, from its rest-pose vertices and skinning."""
    v = bm.model.v_template.detach().cpu().numpy()
    j = bm.weights.argmax(1)
    mat = np.zeros(len(v), np.int64)
    torso = np.isin(j, [0, 3, 6, 9, 13, 14, 16, 17]) | ((j == 12) & (v[:, 1] < 1.47))
    mat[torso] = 1
    mat[torso & (np.floor(v[:, 1] / 0.06) % 2 == 0)] = 2
    mat[np.isin(j, [1, 2, 4, 5])] = 3
    mat[np.isin(j, [7, 8, 10, 11])] = 4
    head = j == 15
    mat[head & (v[:, 1] > 1.70)] = 5
    mat[head & (v[:, 2] < 0.0) & (v[:, 1] > 1.6)] = 5
    mat[np.isin(j, [23, 24])] = 6
    mat[(j == 22) & (v[:, 2] > 0.05)] = 7
    fm = mat[bm.faces]  # majority vote of the three corners (ties: the first corner)
    out = fm[:, 0].copy()
    agree = fm[:, 1] == fm[:, 2]
    out[agree] = fm[agree, 1]
    return out


def background(size: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.55 + 0.2 * ys, 0.6 + 0.1 * xs, 0.7 - 0.2 * ys], -1)
    checker = ((np.floor(xs * 8) + np.floor(ys * 8)) % 2)[..., None] * 0.06
    floor = (ys > 0.8)[..., None] * np.array([-0.15, -0.1, -0.05])
    tint = r.uniform(-0.05, 0.05, 3)
    return np.clip((base + checker + floor + tint) * 255, 0, 255)


def _fill_ids(fid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Covered pixels whose triangle id was lost (multisampled edges at small sizes) take the nearest valid id."""
    from scipy.ndimage import distance_transform_edt

    lost = mask & (fid < 0)
    if not lost.any() or not (fid >= 0).any():
        return fid
    _, (iy, ix) = distance_transform_edt(fid < 0, return_indices=True)
    return np.where(lost, fid[iy, ix], fid)


def geometry(spec: PerformerSpec, with_flow: bool = True) -> Dict[str, object]:
    """The posed body of ``spec`` rendered once: per frame the visible triangle (−1 = background), its shading and
    material, the mask, keypoints, SMPL-X parameters and (``with_flow``) the true flow to the next frame."""
    from scipy.spatial.transform import Rotation as R

    from ..body import smplx as B
    from ..body.fit import body_to_pose
    from ..body.render import Renderer, human_flow

    if spec.frames < 1 or not 16 <= spec.size <= 1024:
        raise BadInputError(f"A performer needs frames >= 1 and a size of 16..1024 px; got {spec.frames} frames, {spec.size} px.")
    ident = identity(spec.character, spec.stripes)
    rng = np.random.default_rng(spec.seed)
    bm = B.get_body_model()
    cam = B.Camera.default(spec.size, spec.size, fov_deg=30.0)
    t = (np.arange(spec.frames) / max(spec.frames, 1) + rng.uniform(0, 1)) % 1.0
    m = _pose(spec.motion, t, rng)
    seq = B.upright(spec.frames, cam, bm, distance=4.2)
    seq.betas[:, :5] = ident["betas"]
    seq.body_pose[:] = m["body_pose"]
    seq.global_orient[:] = (R.from_rotvec(np.stack([np.zeros_like(m["yaw"]), m["yaw"], np.zeros_like(m["yaw"])], 1))
                            * R.from_rotvec([np.pi, 0, 0])).as_rotvec()
    seq.transl[:, 1] += m["dy"]
    seq.transl[:, 0] += m["dx"]
    seq.fps = spec.fps
    with torch.no_grad():
        V = bm.forward(seq)["vertices"].numpy().astype(np.float64)
    faces = bm.faces
    r = Renderer(spec.size, spec.size)
    ids, depths, shades = [], [], []
    try:
        for f in range(spec.frames):
            o = r.render(cam, V[f], faces, kinds=("face_id",))
            ids.append(_fill_ids(o["face_id"], o["mask"]))
            depths.append(o["depth"])
            tri = V[f][faces]
            n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
            shades.append(0.55 + 0.45 * np.clip(-n[:, 2], 0, 1))  # light from the camera (OpenCV: toward −z)
    finally:
        r.close()
    fid = np.stack(ids)
    out = {"face_id": fid, "shade": np.stack(shades), "materials": _face_materials(bm), "mask": fid >= 0,
           "pose": body_to_pose(seq, bm), "body": seq, "size": spec.size}
    if with_flow:
        flows, valids = [], []
        for f in range(spec.frames - 1):
            fl, va = human_flow(cam, V[f], V[f + 1], faces, ids[f], depths[f + 1])
            flows.append(fl)
            valids.append(va)
        out["flow"] = np.stack(flows) if flows else np.zeros((0, spec.size, spec.size, 2), np.float32)
        out["valid"] = np.stack(valids) if valids else np.zeros((0, spec.size, spec.size), bool)
    return out


def colourise(geo: Dict[str, object], palette: np.ndarray, bg: np.ndarray) -> Dict[str, np.ndarray]:
    """Paint a palette (8 materials × RGB) onto a rendered geometry over a background: RGB frames (uint8) and the
    material index per pixel (−1 = background)."""
    fid = geo["face_id"]
    safe = np.maximum(fid, 0)
    mat = np.where(fid >= 0, geo["materials"][safe], -1)
    shade = np.take_along_axis(geo["shade"], safe.reshape(len(fid), -1), 1).reshape(fid.shape)
    col = palette[np.maximum(mat, 0)] * shade[..., None]
    rgb = np.where((fid >= 0)[..., None], col, bg[None])
    return {"rgb": np.clip(rgb, 0, 255).astype(np.uint8), "material": mat.astype(np.int8)}


def generate(spec: PerformerSpec) -> Dict[str, object]:
    geo = geometry(spec)
    ident = identity(spec.character, spec.stripes)
    bg = background(spec.size, spec.seed)
    col = colourise(geo, ident["palette"], bg)
    return {"rgb": col["rgb"], "mask": geo["mask"], "material": col["material"], "pose": geo["pose"], "body": geo["body"],
            "flow": geo["flow"], "valid": geo["valid"], "background": bg.astype(np.uint8), "spec": asdict(spec),
            "palette": ident["palette"].astype(np.uint8), "split": split_of(spec.seed, spec.character)}
