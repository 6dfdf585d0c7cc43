"""Body layer: SMPL-X model loading (no pickle), the body sequence type (``PERFORMER_BODY``), shape transfer,
import of estimator outputs, and the camera.

Camera convention (documented, used everywhere in the pack): **OpenCV** — camera at the origin looking down +z,
x right, y down; pixel ``(u, v) = (fx·x/z + cx, fy·y/z + cy)``.  SMPL-X's own frame is y-up, so a body meant
to stand upright in the image has ``global_orient`` ≈ (π, 0, 0) (a half turn about x) and ``transl.z`` > 0.
The renderer converts to OpenGL (x right, y up, looking down −z) by flipping y and z.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import BadInputError, BadModelFileError, MissingModelError

REQUIRED_KEYS = {
    "v_template": (None, 3), "f": (None, 3), "shapedirs": (None, 3, None), "posedirs": (None, 3, 486),
    "J_regressor": (55, None), "weights": (None, 55), "kintree_table": (2, 55), "hands_componentsl": (45, 45),
    "hands_componentsr": (45, 45), "hands_meanl": (45,), "hands_meanr": (45,), "lmk_faces_idx": (51,),
    "lmk_bary_coords": (51, 3),
}
EMBEDDED = "embedded"
_MODELS: Dict[str, "BodyModel"] = {}


def _check_arrays(arrays: Dict[str, np.ndarray], path: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise BadModelFileError(f"{os.path.basename(path)} is not an SMPL-X body model: it lacks {', '.join(missing)} "
                                f"(an SMPL-X .npz has {', '.join(REQUIRED_KEYS)}).")
    V = arrays["v_template"].shape[0]
    for k, shape in REQUIRED_KEYS.items():
        a = arrays[k]
        if len(a.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            raise BadModelFileError(f"{os.path.basename(path)}: '{k}' has shape {a.shape}; SMPL-X expects "
                                    f"{tuple('N' if s is None else s for s in shape)}.")
    for k in ("shapedirs", "posedirs", "weights"):
        if arrays[k].shape[0] != V:
            raise BadModelFileError(f"{os.path.basename(path)}: '{k}' has {arrays[k].shape[0]} vertices but v_template has {V}.")
    if arrays["J_regressor"].shape[1] != V:
        raise BadModelFileError(f"{os.path.basename(path)}: J_regressor covers {arrays['J_regressor'].shape[1]} vertices, not {V}.")
    if arrays["shapedirs"].shape[2] < 20:
        raise BadModelFileError(f"{os.path.basename(path)}: shapedirs has {arrays['shapedirs'].shape[2]} components; SMPL-X has 20 or 400.")
    if int(arrays["f"].max()) >= V or int(arrays["f"].min()) < 0:
        raise BadModelFileError(f"{os.path.basename(path)}: faces index vertices outside 0..{V - 1}.")


class BodyModel:
    """An SMPL-X body model (``smplx.SMPLX``) read from an ``.npz`` without pickle."""

    def __init__(self, path: Optional[str] = None, device="cpu"):
        import smplx

        if path in (None, "", EMBEDDED):
            from . import default_model as body_model

            arrays = body_model.generate()
            self.name, self.embedded = body_model.EMBEDDED_NAME, True
            src = EMBEDDED
        else:
            if path.endswith(".pkl"):
                raise BadModelFileError(
                    f"{os.path.basename(path)} is an official SMPL-X .pkl, which needs chumpy (it does not import on current "
                    "Python). Use the .npz release (SMPLX_NEUTRAL.npz from smpl-x.is.tue.mpg.de), or convert once where chumpy "
                    "works: np.savez(out, **{k: np.array(v) for k, v in pickle.load(f, encoding='latin1').items()}).")
            if not os.path.isfile(path):
                raise MissingModelError("performer_body", [os.path.basename(path)], [os.path.dirname(path)])
            try:
                with np.load(path, allow_pickle=False) as z:  # object arrays (pickles) are refused here
                    arrays = {k: z[k] for k in z.files}
            except (ValueError, OSError, EOFError) as e:
                raise BadModelFileError(f"Could not read body model {path} without pickle: {e}") from e
            self.name, self.embedded = os.path.basename(path), False
            src = path
        _check_arrays(arrays, src)
        # smplx reads its file with allow_pickle=True: give it a file we wrote from the checked plain arrays
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "SMPLX_NEUTRAL.npz")
            np.savez(tmp, **{k: v for k, v in arrays.items() if v.dtype != object})
            n_shape = arrays["shapedirs"].shape[2]
            self.num_betas = 10 if n_shape == 20 else min(300, n_shape - 100)
            self.model = smplx.SMPLX(tmp, num_betas=self.num_betas, num_expression_coeffs=10, use_pca=False,
                                     flat_hand_mean=True).to(device).eval()
        f = arrays["f"].astype(np.int64)
        keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
        self.faces = f[keep]
        self.parts = arrays["part"].astype(np.int64) if "part" in arrays else None
        self.weights = arrays["weights"]
        self.source = src
        self.device = device

    def forward(self, body: "BodySequence", frames=None) -> Dict[str, torch.Tensor]:
        """Vertices and joints in camera coordinates (OpenCV), (F, V, 3) / (F, 127, 3)."""
        idx = range(body.frames) if frames is None else frames
        idx = list(idx)
        p = {k: torch.as_tensor(v[idx], dtype=torch.float32, device=self.device) for k, v in body.params().items()}
        betas = p["betas"]
        if betas.shape[1] < self.num_betas:
            betas = torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[1]))
        out = self.model(betas=betas[:, : self.num_betas], global_orient=p["global_orient"], body_pose=p["body_pose"],
                         left_hand_pose=p["left_hand_pose"], right_hand_pose=p["right_hand_pose"], jaw_pose=p["jaw_pose"],
                         leye_pose=torch.zeros_like(p["jaw_pose"]), reye_pose=torch.zeros_like(p["jaw_pose"]),
                         expression=p["expression"], transl=p["transl"])
        return {"vertices": out.vertices, "joints": out.joints}


def get_body_model(path: Optional[str] = None) -> BodyModel:
    key = EMBEDDED if path in (None, "", EMBEDDED) else f"{os.path.abspath(path)}:{os.path.getmtime(path) if os.path.exists(path) else 0}"
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = BodyModel(path)
    return _MODELS[key]


@dataclass
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        if not (self.width > 0 and self.height > 0):
            raise BadInputError(f"Camera image size must be positive; got {self.width}×{self.height}.")
        if not (np.isfinite([self.fx, self.fy, self.cx, self.cy]).all() and self.fx > 0 and self.fy > 0):
            raise BadInputError(f"Degenerate camera: focal lengths must be positive and finite (fx={self.fx}, fy={self.fy}).")

    @classmethod
    def default(cls, width: int, height: int, fov_deg: float = 40.0) -> "Camera":
        f = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
        return cls(f, f, width / 2.0, height / 2.0, int(width), int(height))

    def project(self, pts: np.ndarray) -> np.ndarray:
        z = pts[..., 2:3]
        if (z <= 1e-6).any():
            raise BadInputError("Some body points are at or behind the camera (z <= 0); move the body in front of it (transl.z > 0).")
        return np.concatenate([self.fx * pts[..., :1] / z + self.cx, self.fy * pts[..., 1:2] / z + self.cy], -1)

    def scaled(self, width: int, height: int) -> "Camera":
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))


PARAM_SIZES = {"betas": 10, "global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45,
               "jaw_pose": 3, "expression": 10, "transl": 3}


@dataclass
class BodySequence:
    """Per-frame SMPL-X parameters (axis-angle), camera, fps and which body model they belong to."""

    betas: np.ndarray  # (F, 10) (shape; usually identical over frames)
    global_orient: np.ndarray  # (F, 3)
    body_pose: np.ndarray  # (F, 63)
    transl: np.ndarray  # (F, 3) camera coordinates (OpenCV)
    camera: Camera
    left_hand_pose: Optional[np.ndarray] = None  # (F, 45)
    right_hand_pose: Optional[np.ndarray] = None
    jaw_pose: Optional[np.ndarray] = None  # (F, 3)
    expression: Optional[np.ndarray] = None  # (F, 10)
    fps: float = 8.0
    model: str = EMBEDDED  # path of the body model file, or "embedded"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        F = np.asarray(self.global_orient).shape[0]
        for k, n in PARAM_SIZES.items():
            v = getattr(self, k)
            if v is None:
                v = np.zeros((F, n), np.float32)
            v = np.asarray(v, np.float32)
            if v.ndim == 1:
                v = v[None]
            if k == "betas" and v.shape[0] == 1 and F > 1:
                v = np.repeat(v, F, 0)
            if v.shape[0] != F:
                raise BadInputError(f"SMPL-X parameter '{k}' has {v.shape[0]} frames but global_orient has {F}.")
            if v.shape[1] != n:
                if k in ("betas", "expression") and v.shape[1] > n:
                    v = v[:, :n]
                elif k in ("betas", "expression"):
                    v = np.pad(v, ((0, 0), (0, n - v.shape[1])))
                else:
                    raise BadInputError(f"SMPL-X parameter '{k}' has {v.shape[1]} values per frame; expected {n}.")
            if not np.isfinite(v).all():
                raise BadInputError(f"SMPL-X parameter '{k}' contains NaN or infinite values.")
            setattr(self, k, v)

    @property
    def frames(self) -> int:
        return self.global_orient.shape[0]

    def params(self) -> Dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in PARAM_SIZES}

    def copy(self, **kw) -> "BodySequence":
        d = {k: getattr(self, k).copy() for k in PARAM_SIZES}
        d.update(camera=self.camera, fps=self.fps, model=self.model, info=dict(self.info))
        d.update(kw)
        return BodySequence(**d)

    def slice(self, start: int, stop: int) -> "BodySequence":
        """Frames ``start..stop-1`` (same camera, model and fps)."""
        return self.copy(**{k: getattr(self, k)[start:stop].copy() for k in PARAM_SIZES})


def transfer_shape(driving: BodySequence, reference: BodySequence, ref_frame: int = 0, expression: bool = False) -> BodySequence:
    """VividPose/Champ figure transfer: shape (and optionally expression) from the reference, everything else
    (pose, global orientation, translation, camera) from the driving sequence."""
    if not 0 <= ref_frame < reference.frames:
        raise BadInputError(f"Reference frame {ref_frame} is outside the reference bodies ({reference.frames} frames).")
    if reference.model != driving.model:
        raise BadInputError(f"The reference body uses model {reference.model!r} but the driving bodies use {driving.model!r}; "
                            "shape parameters only transfer within one body model.")
    out = driving.copy(betas=np.repeat(reference.betas[ref_frame:ref_frame + 1], driving.frames, 0))
    if expression:
        out.expression = np.repeat(reference.expression[ref_frame:ref_frame + 1], driving.frames, 0)
    out.info["shape_from"] = "reference"
    return out


# ----------------------------------------------------------------------------- import from estimators


ALIASES = {
    "betas": ("betas", "shape", "smplx_shape", "pred_shape"),
    "global_orient": ("global_orient", "root_pose", "smplx_root_pose", "pred_global_orient"),
    "body_pose": ("body_pose", "smplx_body_pose", "pred_body_pose"),
    "left_hand_pose": ("left_hand_pose", "lhand_pose", "smplx_lhand_pose"),
    "right_hand_pose": ("right_hand_pose", "rhand_pose", "smplx_rhand_pose"),
    "jaw_pose": ("jaw_pose", "smplx_jaw_pose"),
    "expression": ("expression", "expr", "smplx_expr"),
    "transl": ("transl", "cam_trans", "smplx_transl", "pred_cam_t", "trans"),
}


def _rotmat_to_aa(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().astype(np.float32)


def from_estimator(data: Dict[str, np.ndarray], camera: Camera, fps: float = 8.0, model: str = EMBEDDED) -> BodySequence:
    """Per-frame SMPL-X parameters from SMPLer-X / 4D-Humans / PyMAF-X style dictionaries.

    Accepted keys (first found wins): see ``ALIASES``; values are (F, n) axis-angle, or rotation matrices
    (F, J, 3, 3) which are converted.  Missing hands/jaw/expression are zero; missing betas are zero."""
    out = {}
    for k, names in ALIASES.items():
        for n in names:
            if n in data:
                a = np.asarray(data[n], np.float32)
                if a.ndim >= 3 and a.shape[-2:] == (3, 3):  # rotation matrices
                    a = _rotmat_to_aa(a).reshape(a.shape[0], -1)
                out[k] = a.reshape(a.shape[0], -1) if a.ndim > 1 else a[None]
                break
    for k in ("global_orient", "body_pose", "transl"):
        if k not in out:
            raise BadInputError(f"The body parameters lack '{k}' (accepted names: {', '.join(ALIASES[k])}).")
    if out["body_pose"].shape[1] == 69:  # SMPL body pose (23 joints): keep the 21 SMPL-X body joints
        out["body_pose"] = out["body_pose"][:, :63]
    return BodySequence(camera=camera, fps=fps, model=model, **out)


def sequence_hash(body: BodySequence) -> str:
    h = hashlib.sha256()
    for k, v in body.params().items():
        h.update(k.encode())
        h.update(v.tobytes())
    h.update(repr(body.camera).encode())
    return h.hexdigest()[:16]


def upright(frames: int, camera: Camera, model: Optional[BodyModel] = None, distance: float = 3.0) -> BodySequence:
    """A neutral standing body facing the camera, centred in the image (a starting point and a test helper)."""
    model = model or get_body_model()
    go = np.tile(np.array([[np.pi, 0, 0]], np.float32), (frames, 1))
    seq = BodySequence(betas=np.zeros((frames, 10)), global_orient=go, body_pose=np.zeros((frames, 63)),
                       transl=np.zeros((frames, 3)), camera=camera, model=EMBEDDED if model.embedded else model.source)
    with torch.no_grad():
        v = model.forward(seq, [0])["vertices"][0].numpy()
    centre = (v.min(0) + v.max(0)) / 2
    seq.transl[:] = np.array([-centre[0], -centre[1], distance - centre[2]], np.float32)
    return seq


__all__ = ["BodyModel", "BodySequence", "Camera", "get_body_model", "transfer_shape", "from_estimator", "upright", "replace"]
