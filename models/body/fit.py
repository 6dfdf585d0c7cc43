"""Fit SMPL-X to 2D whole-body keypoints (``PERFORMER_POSE``) by optimisation.

Keypoints used: the 17 COCO body points, the 6 foot points and both hands (21 each), matched to SMPL-X's joints
and its extra vertex joints (nose, eyes, ears, toes, heels, fingertips).  Face points are not used (the 51
SMPL-X landmarks do not include the jaw line, and the embedded model's landmarks are not anatomical).

Two stages with Adam: (1) global orientation, translation and a body-size scale from the torso points;
(2) everything — shape (shared over the sequence), body and hand poses, orientation, translation — with a
robust (Geman–McClure) reprojection term weighted by keypoint confidence, an L2 pose prior, an L2 shape prior
and temporal smoothness on poses and translations.  The camera is the sequence's (default: 40° vertical field
of view, centred principal point).  Depth comes from the body's size, so with the neutral shape prior the
fitted person stands at the distance that makes an average body match the keypoints.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .smplx import BodyModel, BodySequence, Camera, EMBEDDED
from ..errors import BadInputError
from ..pose.sequence import PoseSequence

# COCO-WholeBody index -> SMPL-X joint index (127-joint output of smplx)
COCO_TO_SMPLX = {0: 55, 1: 57, 2: 56, 3: 59, 4: 58, 5: 16, 6: 17, 7: 18, 8: 19, 9: 20, 10: 21, 11: 1, 12: 2, 13: 4, 14: 5,
                 15: 7, 16: 8, 17: 60, 18: 61, 19: 62, 20: 63, 21: 64, 22: 65}
_LH = [20, 37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70]
_RH = [21, 52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48, 75]
for _i, _j in enumerate(_LH):
    COCO_TO_SMPLX[91 + _i] = _j
for _i, _j in enumerate(_RH):
    COCO_TO_SMPLX[112 + _i] = _j
TORSO = [5, 6, 11, 12]


BUFFERS = ("v_template", "shapedirs", "expr_dirs", "J_regressor", "posedirs", "lbs_weights", "parents")


def model_buffers(model: BodyModel) -> dict:
    """Plain (non-inference) copies of the tensors the joints need: ComfyUI runs nodes in inference mode, and
    inference tensors cannot be saved for backward."""
    m = model.model
    out = {k: getattr(m, k).clone() for k in BUFFERS}
    out["extra_ids"] = m.vertex_joint_selector.extra_joints_idxs.clone()
    return out


def fast_joints(model: BodyModel, betas, global_orient, body_pose, left_hand_pose, right_hand_pose, transl,
                buffers: dict = None) -> torch.Tensor:
    """SMPL-X's first 76 joints (55 skeleton + 21 vertex joints) without skinning all 10 475 vertices: the
    skeleton by forward kinematics, the vertex joints by skinning only their vertices.  Equals ``smplx``'s
    output (tested); ~20× faster inside the fitting loop."""
    from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints

    from types import SimpleNamespace

    m = SimpleNamespace(**(buffers or model_buffers(model)))
    F_ = global_orient.shape[0]
    ids = m.extra_ids
    zeros3 = torch.zeros(F_, 3, device=global_orient.device, dtype=global_orient.dtype)
    shape = torch.cat([betas.expand(F_, -1), torch.zeros(F_, m.expr_dirs.shape[-1], device=betas.device)], -1)
    dirs = torch.cat([m.shapedirs, m.expr_dirs], -1)
    v_shaped = m.v_template + blend_shapes(shape, dirs)
    J = vertices2joints(m.J_regressor, v_shaped)
    full = torch.cat([global_orient, body_pose, zeros3, zeros3, zeros3, left_hand_pose, right_hand_pose], -1)
    rot = batch_rodrigues(full.reshape(-1, 3)).view(F_, -1, 3, 3)
    J_posed, A = batch_rigid_transform(rot, J, m.parents, dtype=rot.dtype)
    eye = torch.eye(3, device=rot.device, dtype=rot.dtype)
    pose_feature = (rot[:, 1:] - eye).view(F_, -1)
    cols = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).reshape(-1)
    v = v_shaped[:, ids] + (pose_feature @ m.posedirs[:, cols]).view(F_, -1, 3)
    T = (m.lbs_weights[ids] @ A.view(F_, -1, 16)).view(F_, -1, 4, 4)
    v = (T[..., :3, :3] @ v[..., None])[..., 0] + T[..., :3, 3]
    return torch.cat([J_posed, v], 1) + transl[:, None]


def keypoint_targets(pose: PoseSequence, person: int = 0, threshold: float = 0.3):
    idx = sorted(COCO_TO_SMPLX)
    k = pose.keypoints[:, person][:, idx]
    conf = np.where(k[..., 2] > threshold, k[..., 2], 0.0)
    return idx, [COCO_TO_SMPLX[i] for i in idx], k[..., :2], conf


def fit_to_keypoints(*args, **kwargs) -> BodySequence:
    """See :func:`_fit` — run with gradients on even inside ComfyUI's inference mode."""
    from ..common import gradients

    with gradients():
        return _fit(*args, **kwargs)


def _fit(pose: PoseSequence, model: BodyModel, camera: Optional[Camera] = None, person: int = 0,
                     iters: int = 300, lr: float = 0.03, w_pose: float = 2e-3, w_shape: float = 5e-3, w_smooth: float = 1.0,
                     threshold: float = 0.3, fit_hands: bool = True, callback: Optional[Callable[[int, int], None]] = None,
                     seed: int = 0) -> BodySequence:
    if pose.frames == 0:
        raise BadInputError("There are no pose frames to fit.")
    if not 0 <= person < pose.people:
        raise BadInputError(f"person {person} is not in the pose sequence ({pose.people} people).")
    cam = camera or Camera.default(pose.width, pose.height)
    if (cam.width, cam.height) != (pose.width, pose.height):
        cam = cam.scaled(pose.width, pose.height)
    torch.manual_seed(seed)
    coco, smplx_idx, target, conf = keypoint_targets(pose, person, threshold)
    torso_cols = [coco.index(i) for i in TORSO]
    F = pose.frames
    usable = (conf[:, torso_cols] > 0).sum(1) >= 3
    if not usable.any():
        raise BadInputError("No frame shows enough of the torso (3 of shoulders/hips) to fit a body; check the poses.")
    H = float(pose.height)
    dev = next(model.model.parameters(), torch.zeros(1)).device if list(model.model.parameters()) else torch.device("cpu")
    tgt = torch.tensor(target, dtype=torch.float32, device=dev)
    w = torch.tensor(conf, dtype=torch.float32, device=dev)
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy

    # initialisation: upright, facing the camera; depth from the torso length, pelvis on the hip centre
    seq0 = BodySequence(betas=np.zeros((F, 10)), global_orient=np.tile([[np.pi, 0, 0]], (F, 1)), body_pose=np.zeros((F, 63)),
                        transl=np.zeros((F, 3)), camera=cam, fps=pose.fps, model=EMBEDDED if model.embedded else model.source)
    with torch.no_grad():
        J0 = model.forward(seq0, [0])["joints"][0].cpu().numpy()
    torso_m = np.linalg.norm((J0[16] + J0[17]) / 2 - (J0[1] + J0[2]) / 2)
    transl0 = np.zeros((F, 3), np.float32)
    last = None
    for f in range(F):
        k = target[f]
        c = conf[f]
        sh = [i for i in (coco.index(5), coco.index(6)) if c[i] > 0]
        hp = [i for i in (coco.index(11), coco.index(12)) if c[i] > 0]
        if sh and hp:
            px = np.linalg.norm(k[sh].mean(0) - k[hp].mean(0))
            z = fy * torso_m / max(px, 1e-3)
            u, v = k[hp].mean(0)
            pelvis = np.array([(u - cx) * z / fx, (v - cy) * z / fy, z])
            last = pelvis - J0[0]
        transl0[f] = last if last is not None else 0
    if not usable[0]:  # frames before the first usable one take its placement
        first = int(np.argmax(usable))
        transl0[:first] = transl0[first]
    params = {
        "betas": torch.zeros(1, 10, device=dev, requires_grad=True),
        "global_orient": torch.tensor(seq0.global_orient, device=dev, requires_grad=True),
        "body_pose": torch.zeros(F, 63, device=dev, requires_grad=True),
        "transl": torch.tensor(transl0, device=dev, requires_grad=True),
        "left_hand_pose": torch.zeros(F, 45, device=dev, requires_grad=fit_hands),
        "right_hand_pose": torch.zeros(F, 45, device=dev, requires_grad=fit_hands),
    }

    bufs = model_buffers(model)

    def joints():
        J = fast_joints(model, params["betas"], params["global_orient"], params["body_pose"], params["left_hand_pose"],
                        params["right_hand_pose"], params["transl"], bufs)
        return J[:, smplx_idx]

    def project(J):
        z = J[..., 2].clamp(min=0.05)
        return torch.stack([fx * J[..., 0] / z + cx, fy * J[..., 1] / z + cy], -1)

    def data_term(J, mask=None):
        r2 = ((project(J) - tgt) / H).pow(2).sum(-1)
        sigma2 = 0.05 ** 2
        rho = sigma2 * r2 / (r2 + sigma2)  # Geman–McClure: outliers (wrong detections) saturate
        ww = w if mask is None else w * mask
        return (ww * rho).sum() / ww.sum().clamp(min=1e-6) / sigma2

    total = iters + max(iters // 3, 1)
    step = 0
    # stage 1: orientation + translation from the torso
    torso_mask = torch.zeros_like(w)
    torso_mask[:, torso_cols] = 1
    opt = torch.optim.Adam([params["global_orient"], params["transl"]], lr=lr)
    for _ in range(max(iters // 3, 1)):
        opt.zero_grad()
        loss = data_term(joints(), torso_mask)
        loss.backward()
        opt.step()
        step += 1
        if callback:
            callback(step, total)
    # stage 2: everything
    free = [params[k] for k in ("betas", "global_orient", "body_pose", "transl")]
    if fit_hands:
        free += [params["left_hand_pose"], params["right_hand_pose"]]
    opt = torch.optim.Adam(free, lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        J = joints()
        loss = data_term(J)
        loss = loss + w_pose * params["body_pose"].pow(2).sum(-1).mean() + w_shape * params["betas"].pow(2).sum()
        if fit_hands:
            loss = loss + w_pose * 0.1 * (params["left_hand_pose"].pow(2).sum(-1) + params["right_hand_pose"].pow(2).sum(-1)).mean()
        if F > 1:
            for k in ("body_pose", "global_orient"):
                loss = loss + w_smooth * (params[k][1:] - params[k][:-1]).pow(2).sum(-1).mean()
            loss = loss + w_smooth * 10 * (params["transl"][1:] - params["transl"][:-1]).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        step += 1
        if callback:
            callback(step, total)
    with torch.no_grad():
        err = ((project(joints()) - tgt).norm(dim=-1) * (w > 0)).sum() / (w > 0).sum().clamp(min=1)
    res = BodySequence(betas=params["betas"].detach().cpu().numpy().repeat(F, 0),
                       global_orient=params["global_orient"].detach().cpu().numpy(),
                       body_pose=params["body_pose"].detach().cpu().numpy(), transl=params["transl"].detach().cpu().numpy(),
                       left_hand_pose=params["left_hand_pose"].detach().cpu().numpy(),
                       right_hand_pose=params["right_hand_pose"].detach().cpu().numpy(), camera=cam, fps=pose.fps,
                       model=seq0.model)
    res.info.update(fit_mean_px_error=float(err), fit_frames_without_torso=int((~usable).sum()))
    return res


def body_to_pose(body: BodySequence, model: BodyModel) -> PoseSequence:
    """Project the body's joints to a PERFORMER_POSE (COCO-WholeBody layout; face points absent)."""
    from ..pose.sequence import N_POINTS

    with torch.no_grad():
        J = model.forward(body)["joints"].cpu().numpy()
    uv = body.camera.project(J)
    k = np.zeros((body.frames, 1, N_POINTS, 3), np.float32)
    for c, s in COCO_TO_SMPLX.items():
        k[:, 0, c, :2] = uv[:, s]
        k[:, 0, c, 2] = 1.0
    inside = (k[..., 0] >= 0) & (k[..., 0] < body.camera.width) & (k[..., 1] >= 0) & (k[..., 1] < body.camera.height)
    k[~inside] = 0
    return PoseSequence(k, body.camera.width, body.camera.height, body.fps)
