"""Body layer on the embedded SMPL-X-format model: loading (no pickle), renders against an independent
rasteriser, shape transfer, and the 3D-aware human flow against independently computed displacements."""
import numpy as np
import pytest
import torch

from performer_pkg.models.body import smplx as B
from performer_pkg.models.errors import BadInputError, BadModelFileError
from performer_pkg.models.body.render import Renderer, human_flow, part_labels

SIZE = 256


@pytest.fixture(scope="module")
def bm():
    return B.get_body_model()


@pytest.fixture(scope="module")
def renderer():
    r = Renderer(SIZE, SIZE)
    yield r
    r.close()


def verts(bm, seq):
    with torch.no_grad():
        return bm.forward(seq)["vertices"].numpy().astype(np.float64)


def raster(cam, V, faces):
    """Independent z-buffer rasteriser: pixel centres, screen-space barycentrics made perspective-correct."""
    H, W = cam.height, cam.width
    uv = cam.project(V)
    z = V[:, 2]
    zbuf = np.full((H, W), np.inf)
    fid = np.full((H, W), -1)
    bary = np.zeros((H, W, 3))
    for i, f in enumerate(faces):
        p = uv[f]
        x0, x1 = int(np.floor(p[:, 0].min())), int(np.ceil(p[:, 0].max()))
        y0, y1 = int(np.floor(p[:, 1].min())), int(np.ceil(p[:, 1].max()))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
        if x0 > x1 or y0 > y1:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        (ax, ay), (bx, by), (cx, cy) = p
        den = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(den) < 1e-12:
            continue
        l0 = ((by - cy) * (xs - cx) + (cx - bx) * (ys - cy)) / den
        l1 = ((cy - ay) * (xs - cx) + (ax - cx) * (ys - cy)) / den
        l2 = 1 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        if not inside.any():
            continue
        w = np.stack([l0 / z[f[0]], l1 / z[f[1]], l2 / z[f[2]]], -1)
        depth = 1 / w.sum(-1)
        pc = w * depth[..., None]
        yy, xx = np.nonzero(inside)
        Y, X = yy + y0, xx + x0
        closer = depth[yy, xx] < zbuf[Y, X]
        Y, X, yy, xx = Y[closer], X[closer], yy[closer], xx[closer]
        zbuf[Y, X] = depth[yy, xx]
        fid[Y, X] = i
        bary[Y, X] = pc[yy, xx]
    return fid, bary, np.where(np.isfinite(zbuf), zbuf, 0)


def posed(bm, cam, frames=2):
    seq = B.upright(frames, cam, bm)
    seq.body_pose[:, 3 * 17 + 2] = -0.9  # left shoulder down (a more natural arm)
    seq.body_pose[:, 3 * 16 + 2] = 0.9
    seq.body_pose[:, 3 * 3 + 0] = 0.4  # left knee bent
    return seq


def test_embedded_model_has_the_smplx_layout(bm):
    import smplx.vertex_ids

    out = bm.forward(B.upright(1, B.Camera.default(SIZE, SIZE), bm))
    assert out["vertices"].shape == (1, 10475, 3) and out["joints"].shape == (1, 127, 3)
    v = bm.model.v_template.numpy()
    ids = smplx.vertex_ids.vertex_ids["smplx"]
    assert v[ids["nose"], 1] > 1.55 and v[ids["nose"], 2] > 0.08  # the nose vertex is on the face, in front
    assert v[ids["LBigToe"], 1] < 0.1 and v[ids["lindex"], 0] > 0.75  # toes low, left fingertip far left


def test_render_mask_matches_independent_rasterisation(bm, renderer):
    cam = B.Camera.default(SIZE, SIZE)
    seq = posed(bm, cam, 1)
    V = verts(bm, seq)[0]
    out = renderer.render(cam, V, bm.faces, part_labels(bm.weights))
    fid, _, zb = raster(cam, V, bm.faces)
    ref = fid >= 0
    iou = (out["mask"] & ref).sum() / (out["mask"] | ref).sum()
    assert iou >= 0.95, iou
    both = out["mask"] & ref
    assert np.abs(out["depth"][both] - zb[both]).mean() < 0.01  # metres
    assert out["normal"].shape == out["semantic"].shape == (SIZE, SIZE, 3) and out["semantic"][ref].any()


def test_shape_transfer_changes_only_shape(bm):
    cam = B.Camera.default(SIZE, SIZE)
    drive = posed(bm, cam, 3)
    drive.body_pose[1:, 3 * 17 + 2] = -0.2
    ref = B.upright(1, cam, bm)
    ref.betas[0, :5] = (1.5, 1.0, 1.0, 0.5, -0.5)
    out = B.transfer_shape(drive, ref)
    for k in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "transl", "expression"):
        assert np.array_equal(getattr(out, k), getattr(drive, k)), k
    assert np.allclose(out.betas, ref.betas[0])
    a, b = verts(bm, drive), verts(bm, out)
    assert np.abs(a - b).max() > 0.02
    h = lambda v: v[..., 1].max(-1) - v[..., 1].min(-1)  # noqa: E731
    assert (h(b) > h(a)).all()  # taller (beta 0) in every frame
    with pytest.raises(BadInputError, match="uses model"):
        B.transfer_shape(drive, ref.copy(model="/elsewhere/SMPLX_NEUTRAL.npz"))


def _flow_check(bm, renderer, seq):
    cam = seq.camera
    V = verts(bm, seq)
    o0 = renderer.render(cam, V[0], bm.faces, kinds=("face_id",))
    o1 = renderer.render(cam, V[1], bm.faces, part_labels(bm.weights), kinds=("semantic", "face_id"))
    flow, valid = human_flow(cam, V[0], V[1], bm.faces, o0["face_id"], o1["depth"])
    fid, bary, _ = raster(cam, V[0], bm.faces)  # independent: own rasteriser, own barycentrics
    use = valid & (fid >= 0)
    ys, xs = np.nonzero(use)
    P1 = (V[1][bm.faces[fid[ys, xs]]] * bary[ys, xs][..., None]).sum(1)
    true = cam.project(P1) - np.stack([xs + 0.5, ys + 0.5], 1)
    epe = np.linalg.norm(flow[ys, xs] - true, axis=1)
    return flow, valid, epe, o0, o1


def test_flow_rigid_and_articulated_motion(bm, renderer):
    import cv2

    cam = B.Camera.default(SIZE, SIZE)
    rigid = posed(bm, cam, 2)
    rigid.transl[1, 0] += 0.05
    flow, valid, epe, _, _ = _flow_check(bm, renderer, rigid)
    assert valid.sum() > 3000 and epe.mean() <= 0.5, epe.mean()
    z = verts(bm, rigid)[0][:, 2].mean()
    assert abs(np.median(flow[valid][:, 0]) - cam.fx * 0.05 / z) < 0.5  # ≈ f·Δx / z
    art = posed(bm, cam, 2)
    art.body_pose[1, 3 * 17 + 2] = -0.3  # raise the left arm
    art.body_pose[1, 3 * 18 + 1] = 0.8  # and bend the elbow
    flow, valid, epe, o0, o1 = _flow_check(bm, renderer, art)
    assert epe.mean() <= 0.5 and np.percentile(epe, 95) <= 1.0, (epe.mean(), np.percentile(epe, 95))
    assert np.abs(flow[valid]).max() > 5  # the arm really moved
    # warping frame n+1 back with the flow reconstructs frame n (semantic colours) on valid pixels
    sem0 = renderer.render(cam, verts(bm, art)[0], bm.faces, part_labels(bm.weights), kinds=("semantic",))["semantic"]
    gx, gy = np.meshgrid(np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32))
    back = cv2.remap(o1["semantic"], gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST)
    agree = (back[valid] == sem0[valid]).all(-1).mean()
    assert agree >= 0.95, agree


def test_bad_body_inputs(tmp_path, bm):
    cam = B.Camera.default(SIZE, SIZE)
    p = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(p, v_template=np.zeros((10, 3)))
    with pytest.raises(BadModelFileError, match="lacks f, shapedirs"):
        B.BodyModel(str(p))
    obj = tmp_path / "evil.npz"
    np.savez(obj, v_template=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadModelFileError, match="without pickle"):
        B.BodyModel(str(obj))
    wrong = tmp_path / "model.safetensors.npz"
    wrong.write_bytes(b"not a zip at all")
    with pytest.raises(BadModelFileError, match="Could not read body model"):
        B.BodyModel(str(wrong))
    with pytest.raises(BadModelFileError, match="needs chumpy"):
        B.BodyModel(str(tmp_path / "SMPLX_NEUTRAL.pkl"))
    with pytest.raises(BadInputError, match="Degenerate camera"):
        B.Camera(0.0, 100.0, 64, 64, 128, 128)
    seq = B.upright(2, cam, bm)
    with pytest.raises(BadInputError, match="has 3 frames but global_orient has 2"):
        seq.copy(transl=np.zeros((3, 3)))
    seq.transl[:, 2] = -3
    with pytest.raises(BadInputError, match="behind the camera"):
        cam.project(verts(bm, seq)[0])


def test_fitting_recovers_keypoints_and_pose(bm):
    """Keypoints projected from a known body (turned 17° away, left elbow and a knee bending over two frames) are
    fitted from the default start.  Tolerances: mean 2D error ≤ 2 % of the image height; the pose, which a single
    view leaves partly ambiguous in depth, within a mean geodesic error of 20° over the 21 body joints and a
    root-relative mean 3D joint error (MPJPE) of 15 cm."""
    from scipy.spatial.transform import Rotation as Rot

    from performer_pkg.models.body.fit import body_to_pose, fit_to_keypoints

    cam = B.Camera.default(SIZE, SIZE)
    true = posed(bm, cam, 2)
    true.body_pose[:, 3 * 17 + 2] = [-0.9, -0.3]
    true.body_pose[:, 3 * 18 + 1] = [0.3, 1.0]
    true.body_pose[:, 3 * 4 + 0] = [0.2, 0.7]
    true.global_orient[:] = (Rot.from_rotvec([0, 0.3, 0]) * Rot.from_rotvec([np.pi, 0, 0])).as_rotvec()
    kp = body_to_pose(true, bm)
    fit = fit_to_keypoints(kp, bm, iters=150)
    back = body_to_pose(fit, bm)
    vis = kp.keypoints[..., 2] > 0
    err = np.linalg.norm(back.keypoints[..., :2] - kp.keypoints[..., :2], axis=-1)[vis]
    assert err.mean() <= 0.02 * SIZE, err.mean()
    a, b = Rot.from_rotvec(true.body_pose.reshape(-1, 3)), Rot.from_rotvec(fit.body_pose.reshape(-1, 3))
    assert np.degrees((a.inv() * b).magnitude()).mean() <= 20
    with torch.no_grad():
        Jt, Jf = bm.forward(true)["joints"].numpy()[:, :22], bm.forward(fit)["joints"].numpy()[:, :22]
    assert np.linalg.norm((Jt - Jt[:, :1]) - (Jf - Jf[:, :1]), axis=-1).mean() <= 0.15
    from performer_pkg.models.pose.sequence import empty

    with pytest.raises(BadInputError, match="No frame shows enough of the torso"):
        fit_to_keypoints(empty(2, SIZE, SIZE), bm, iters=1)


def test_fast_joints_equal_smplx(bm):
    from performer_pkg.models.body.fit import fast_joints

    cam = B.Camera.default(SIZE, SIZE)
    seq = posed(bm, cam, 2)
    seq.betas[:, :3] = (0.5, -1.0, 0.8)
    seq.left_hand_pose[:, 5] = 0.7
    p = {k: torch.tensor(v) for k, v in seq.params().items()}
    J = fast_joints(bm, p["betas"][:1], p["global_orient"], p["body_pose"], p["left_hand_pose"], p["right_hand_pose"], p["transl"])
    ref = bm.forward(seq)["joints"][:, :76]
    torch.testing.assert_close(J, ref, rtol=1e-5, atol=1e-5)


def test_import_estimator_parameters():
    from scipy.spatial.transform import Rotation as Rot

    cam = B.Camera.default(SIZE, SIZE)
    rng = np.random.default_rng(0)
    aa = rng.normal(0, 0.3, (4, 21, 3))
    data = {"smplx_root_pose": np.tile([[np.pi, 0, 0]], (4, 1)), "body_pose": Rot.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(4, 21, 3, 3),
            "shape": rng.normal(0, 1, (4, 10)), "cam_trans": np.tile([[0, 0, 3.0]], (4, 1)), "expr": np.zeros((4, 10))}
    seq = B.from_estimator(data, cam, fps=25)
    np.testing.assert_allclose(seq.body_pose.reshape(4, 21, 3), aa, atol=1e-5)  # rotation matrices -> axis-angle
    assert seq.frames == 4 and seq.fps == 25 and np.allclose(seq.transl[:, 2], 3)
    with pytest.raises(BadInputError, match="lack 'transl'"):
        B.from_estimator({"global_orient": np.zeros((2, 3)), "body_pose": np.zeros((2, 63))}, cam)
