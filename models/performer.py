"""The synthetic performer: a seeded, textured person on the embedded body, with full ground truth.

``generate(PerformerSpec(seed, character, motion, frames, size))`` renders a person (skin, hair, shirt, trousers,
shoes, eyes and mouth; optional striped shirt) over a static procedural background in a procedural motion
(``walk``, ``wave``, ``squat``, ``turn``, ``dance``) and returns, per frame: RGB, mask, whole-body 2D keypoints
(``PoseSequence``), SMPL-X parameters (``BodySequence``) and the true per-pixel flow to the next frame (with its
validity).  Everything is a function of the spec: the same spec gives the same bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np
import torch

from .errors import BadInputError

MOTIONS = ("walk", "wave", "squat", "turn", "dance")


@dataclass
class PerformerSpec:
    seed: int = 0
    character: int = 0  # picks colours and body shape
    motion: str = "wave"
    frames: int = 16
    size: int = 128
    stripes: bool = True
    fps: float = 8.0


def _palette(character: int) -> Dict[str, np.ndarray]:
    r = np.random.default_rng(1000 + character)
    skin = np.array([[224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 205, 148]])[character % 4]
    return {"skin": skin, "hair": r.integers(10, 90, 3), "shirt": r.integers(40, 255, 3), "trousers": r.integers(20, 140, 3),
            "shoes": np.array([30, 30, 30]), "eyes": np.array([20, 20, 40]), "mouth": np.array([150, 40, 50]),
            "stripe": r.integers(0, 255, 3)}


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


def _vertex_colours(bm, pal, stripes: bool) -> np.ndarray:

    v = bm.model.v_template.detach().cpu().numpy()
    W = bm.weights
    j = W.argmax(1)
    col = np.tile(pal["skin"], (len(v), 1)).astype(np.float64)
    torso = np.isin(j, [0, 3, 6, 9, 13, 14, 16, 17]) | ((j == 12) & (v[:, 1] < 1.47))
    col[torso] = pal["shirt"]
    if stripes:
        band = (np.floor(v[:, 1] / 0.06) % 2 == 0) & torso
        col[band] = pal["stripe"]
    legs = np.isin(j, [1, 2, 4, 5])
    col[legs] = pal["trousers"]
    col[np.isin(j, [7, 8, 10, 11])] = pal["shoes"]
    head = j == 15
    col[head & (v[:, 1] > 1.70)] = pal["hair"]
    col[head & (v[:, 2] < 0.0) & (v[:, 1] > 1.6)] = pal["hair"]
    col[np.isin(j, [23, 24])] = pal["eyes"]
    col[(j == 22) & (v[:, 2] > 0.05)] = pal["mouth"]
    return col


def _background(size: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.55 + 0.2 * ys, 0.6 + 0.1 * xs, 0.7 - 0.2 * ys], -1)
    checker = ((np.floor(xs * 8) + np.floor(ys * 8)) % 2)[..., None] * 0.06
    floor = (ys > 0.8)[..., None] * np.array([-0.15, -0.1, -0.05])
    tint = r.uniform(-0.05, 0.05, 3)
    return np.clip((base + checker + floor + tint) * 255, 0, 255)


def generate(spec: PerformerSpec) -> Dict[str, object]:
    from . import body as B
    from .fit import body_to_pose
    from .render import Renderer, human_flow

    if spec.frames < 1 or not 16 <= spec.size <= 1024:
        raise BadInputError(f"A performer needs frames >= 1 and a size of 16..1024 px; got {spec.frames} frames, {spec.size} px.")
    rng = np.random.default_rng(spec.seed)
    bm = B.get_body_model()
    cam = B.Camera.default(spec.size, spec.size, fov_deg=30.0)
    t = (np.arange(spec.frames) / max(spec.frames, 1) + rng.uniform(0, 1)) % 1.0
    m = _pose(spec.motion, t, rng)
    seq = B.upright(spec.frames, cam, bm, distance=4.2)
    seq.betas[:, :5] = np.random.default_rng(2000 + spec.character).normal(0, 0.6, 5)
    seq.body_pose[:] = m["body_pose"]
    from scipy.spatial.transform import Rotation as R

    seq.global_orient[:] = (R.from_rotvec(np.stack([np.zeros_like(m["yaw"]), m["yaw"], np.zeros_like(m["yaw"])], 1))
                            * R.from_rotvec([np.pi, 0, 0])).as_rotvec()
    seq.transl[:, 1] += m["dy"]
    seq.transl[:, 0] += m["dx"]
    seq.fps = spec.fps
    with torch.no_grad():
        V = bm.forward(seq)["vertices"].numpy().astype(np.float64)
    pal = _palette(spec.character)
    base_col = _vertex_colours(bm, pal, spec.stripes)
    bg = _background(spec.size, spec.seed)
    r = Renderer(spec.size, spec.size)
    rgb, masks, ids, depths = [], [], [], []
    try:
        import trimesh

        for f in range(spec.frames):
            n = np.asarray(trimesh.Trimesh(V[f], bm.faces, process=False).vertex_normals)
            shade = 0.55 + 0.45 * np.clip(-n[:, 2], 0, 1)  # light from the camera (OpenCV: toward −z)
            col = np.clip(base_col * shade[:, None], 0, 255).astype(np.uint8)
            c, d = r._render_colours(cam, V[f], bm.faces, colours_per_vertex=col)
            mask = d > 0
            o = r.render(cam, V[f], bm.faces, kinds=("face_id",))
            rgb.append(np.where(mask[..., None], c, bg).astype(np.uint8))
            masks.append(mask)
            ids.append(o["face_id"])
            depths.append(o["depth"])
    finally:
        r.close()
    flows, valids = [], []
    for f in range(spec.frames - 1):
        fl, va = human_flow(cam, V[f], V[f + 1], bm.faces, ids[f], depths[f + 1])
        flows.append(fl)
        valids.append(va)
    pose = body_to_pose(seq, bm)
    return {"rgb": np.stack(rgb), "mask": np.stack(masks), "pose": pose, "body": seq,
            "flow": np.stack(flows) if flows else np.zeros((0, spec.size, spec.size, 2), np.float32),
            "valid": np.stack(valids) if valids else np.zeros((0, spec.size, spec.size), bool),
            "background": bg.astype(np.uint8), "spec": asdict(spec)}
