"""Pose sequence type: OpenPose JSON and file round trips, the ControlNet drawing convention, landmarks,
reference-frame selection."""
import json
import math

import numpy as np
import pytest

from performer_pkg.models.pose import sequence as P
from performer_pkg.models.errors import BadInputError
from example_inputs import hand_made_pose


def test_openpose_json_and_file_round_trips_are_lossless(tmp_path):
    a = hand_made_pose()
    seq = P.PoseSequence(np.concatenate([a.keypoints, hand_made_pose(dx=30, wave=1).keypoints]), 512, 512, 12.0)
    js = P.to_openpose(seq)
    assert len(js) == 2 and len(js[0]["people"][0]["pose_keypoints_2d"]) == 54
    assert len(js[0]["people"][0]["face_keypoints_2d"]) == 210
    back = P.from_openpose(json.loads(json.dumps(js)))
    np.testing.assert_array_equal(back.keypoints, seq.keypoints)
    assert (back.width, back.height, back.fps) == (512, 512, 12.0)
    # normalised coordinates (as some nodes emit) read back to the same pixels
    norm = P.from_openpose(json.loads(json.dumps(P.to_openpose(seq, normalised=True))))
    np.testing.assert_allclose(norm.keypoints, seq.keypoints, atol=1e-3)
    path = tmp_path / "pose.json"
    P.save_json(seq, str(path))
    np.testing.assert_array_equal(P.load_json(str(path)).keypoints, seq.keypoints)
    # the neck is written as the shoulder midpoint, OpenPose-18 style
    body = np.array(js[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    np.testing.assert_allclose(body[1, :2], (seq.keypoints[0, 0, 5, :2] + seq.keypoints[0, 0, 6, :2]) / 2)


def test_skeleton_drawing_matches_controlnet_aux_pixel_for_pixel():
    """Reference: controlnet_aux.dwpose.util (the code DWPose/ControlNet-openpose preprocessors use to make the
    hint images the openpose ControlNets were trained on), fed the same hand-made pose in its own format."""
    from controlnet_aux.dwpose import util

    pose = hand_made_pose()
    for W, H in ((512, 512), (384, 640)):
        ours = P.draw(pose, W, H)[0]
        k = pose.keypoints[0, 0]
        cand = np.zeros((18, 2))
        for i, c in enumerate(P.OP18_FROM_COCO):
            cand[i] = ((k[5, :2] + k[6, :2]) / 2 if c is None else k[c, :2]) / (pose.width, pose.height)
        ref = np.zeros((H, W, 3), np.uint8)
        ref = util.draw_bodypose(ref, cand, np.arange(18)[None].astype(float))
        hands = [k[P.LHAND, :2] / (pose.width, pose.height), k[P.RHAND, :2] / (pose.width, pose.height)]
        ref = util.draw_handpose(ref, hands)
        ref = util.draw_facepose(ref, [k[P.FACE, :2] / (pose.width, pose.height)])
        assert ours.shape == ref.shape
        assert (ours != ref).sum() == 0, f"{(ours != ref).any(-1).sum()} pixels differ at {W}x{H}"
    body_only = P.draw(pose, hands=False, face=False)[0]
    assert body_only.any() and (body_only != P.draw(pose)[0]).any()  # hands and face switch off


def test_landmarks_and_reference_frame_selection():
    pose = hand_made_pose()
    f5 = P.landmarks(pose, "face5", 0)
    assert f5.shape == (5, 3) and (f5[:, 2] > 0).all() and f5[0, 0] < f5[1, 0]
    assert P.landmarks(pose, "left_hand", 0).shape == (21, 3)
    with pytest.raises(BadInputError, match="Unknown landmark part"):
        P.landmarks(pose, "tail", 0)
    train = P.PoseSequence(np.concatenate([hand_made_pose(wave=w).keypoints for w in (0.0, 0.8, 1.6)]), 512, 512)
    target = P.PoseSequence(np.concatenate([hand_made_pose(dx=60, wave=w).keypoints for w in (1.5, 1.7)]), 512, 512)
    assert P.nearest_frame(train, target) == 2  # translation does not matter, the raised arm does
    target.keypoints[:, :, :, 2] = 0
    with pytest.raises(BadInputError, match="No training frame"):
        P.nearest_frame(train, target)


def test_bad_pose_inputs():
    with pytest.raises(BadInputError, match="shape"):
        P.PoseSequence(np.zeros((2, 1, 17, 3)), 64, 64)
    with pytest.raises(BadInputError, match="NaN"):
        P.PoseSequence(np.full((1, 1, 133, 3), np.nan), 64, 64)
    with pytest.raises(BadInputError, match="no frames"):
        P.from_openpose([])
    with pytest.raises(BadInputError, match="expected 18×3"):
        P.from_openpose([{"people": [{"pose_keypoints_2d": [1, 2, 3]}], "canvas_width": 8, "canvas_height": 8}])


def _limb_lengths(k):
    from performer_pkg.models.pose.retarget import LIMBS, ROOT, NECK

    def pt(i):
        if i == ROOT:
            return (k[11, :2] + k[12, :2]) / 2
        if i == NECK:
            return (k[5, :2] + k[6, :2]) / 2
        return k[i, :2]

    return {(a, b): float(np.linalg.norm(pt(b) - pt(a))) for a, b in LIMBS}, pt


def _angles(k):
    from performer_pkg.models.pose.retarget import LIMBS

    _, pt = _limb_lengths(k)
    return np.array([math.atan2(*(pt(b) - pt(a))[::-1]) for a, b in LIMBS])


@pytest.mark.parametrize("ref_canvas", [(512, 512), (300, 900)])
def test_retarget_matches_reference_limbs_keeps_angles_and_canvas(ref_canvas):
    from performer_pkg.models.pose.retarget import retarget

    # driving: the hand-made person walking right with a waving arm; reference: a person with a longer torso,
    # longer legs and shorter arms, seen in another framing (another canvas size, off-centre)
    drive = P.PoseSequence(np.concatenate([hand_made_pose(dx=8 * f, wave=0.3 * f).keypoints for f in range(10)]), 512, 512, 10)
    rk = hand_made_pose().keypoints[0, 0].copy()
    hips = (rk[11, :2] + rk[12, :2]) / 2
    rk[:5, 1] -= 30  # longer neck/torso
    rk[5:11, 1] -= 30
    for a, b in ((7, 5), (8, 6), (9, 7), (10, 8)):
        rk[a, :2] = rk[b, :2] + 0.8 * (rk[a, :2] - rk[b, :2])
    for a in (13, 14):
        rk[a, 1] += 20
    for a in (15, 16):
        rk[a, 1] += 45
    sx, sy = ref_canvas[0] / 512, ref_canvas[1] / 512
    scale = min(sx, sy) * 0.8
    rk[:, :2] = (rk[:, :2] - hips) * scale + hips * (sx, sy)
    ref = P.PoseSequence(rk[None, None], ref_canvas[0], ref_canvas[1])
    out = retarget(drive, ref, keep_translation=True)
    want, _ = _limb_lengths(rk * np.array([512 / ref_canvas[1], 512 / ref_canvas[1], 1]))
    for f in range(drive.frames):
        got, _ = _limb_lengths(out.keypoints[f, 0])
        for limb, L in want.items():
            assert abs(got[limb] - L) <= 0.02 * L + 1e-3, (f, limb, got[limb], L)
        np.testing.assert_allclose(_angles(out.keypoints[f, 0]), _angles(drive.keypoints[f, 0]), atol=1e-4)
    vis = out.keypoints[..., 2] > 0.3
    xy = out.keypoints[..., :2][vis]
    assert xy.min() >= 0 and xy[:, 0].max() <= 511 and xy[:, 1].max() <= 511
    # translation: kept (moves right) or not (hips fixed)
    hips_x = (out.keypoints[:, 0, 11, 0] + out.keypoints[:, 0, 12, 0]) / 2
    assert hips_x[-1] > hips_x[0] + 20
    still = retarget(drive, ref, keep_translation=False)
    sh = (still.keypoints[:, 0, 11, 0] + still.keypoints[:, 0, 12, 0]) / 2
    assert np.ptp(sh) < 1e-3


def test_retarget_fits_inside_canvas_and_rejects_missing_people():
    from performer_pkg.models.pose.retarget import retarget

    drive = P.PoseSequence(np.concatenate([hand_made_pose(dx=20 * f).keypoints for f in range(8)]), 512, 512)
    big = hand_made_pose().keypoints.copy()
    big[..., :2] = (big[..., :2] - 256) * 1.9 + 256  # a reference that fills more than the canvas
    out = retarget(drive, P.PoseSequence(big, 512, 512))
    xy = out.keypoints[..., :2][out.keypoints[..., 2] > 0.3]
    assert xy.min() >= 0 and xy.max() <= 511
    empty_ref = P.empty(1, 512, 512)
    with pytest.raises(BadInputError, match="No person found in the reference"):
        retarget(drive, empty_ref)
    with pytest.raises(BadInputError, match="needs both shoulders or both hips"):
        retarget(P.empty(3, 512, 512), hand_made_pose())
    # a half-body reference (no hips, like a portrait photo) anchors at the shoulders
    half = hand_made_pose().keypoints.copy()
    half[0, 0, 11:23, 2] = 0
    out = retarget(drive, P.PoseSequence(half, 512, 512))
    ref_arm = np.linalg.norm(half[0, 0, 7, :2] - half[0, 0, 5, :2])
    got_arm = np.linalg.norm(out.keypoints[:, 0, 7, :2] - out.keypoints[:, 0, 5, :2], axis=-1)
    np.testing.assert_allclose(got_arm, ref_arm, rtol=0.02)
    assert (out.keypoints[:, 0, 13, 2] > 0).all()  # legs still come from the driving video


def test_gap_filling_and_one_euro_smoothing():
    rng = np.random.default_rng(0)
    seq = P.PoseSequence(np.concatenate([hand_made_pose(dx=4 * f).keypoints for f in range(30)]), 512, 512, 30)
    clean = seq.keypoints.copy()
    noisy = seq.copy()
    noisy.keypoints[..., :2] += rng.normal(0, 3, noisy.keypoints[..., :2].shape).astype(np.float32)
    noisy.keypoints[10:13, 0, :, 2] = 0  # person missing for 3 frames
    noisy.keypoints[10:13, 0, :, :2] = 0
    filled = P.fill_gaps(noisy, max_gap=4)
    assert (filled.keypoints[10:13, 0, :17, 2] > 0).all()
    assert np.abs(filled.keypoints[11, 0, :17, :2] - clean[11, 0, :17, :2]).max() < 15
    assert (P.fill_gaps(noisy, max_gap=2).keypoints[10:13, 0, :, 2] == 0).all()  # longer gaps are left alone
    smooth = P.one_euro(filled, min_cutoff=1.0, beta=0.0)
    err = lambda k: np.abs(np.diff(k[15:, 0, :17, :2] - clean[15:, 0, :17, :2], axis=0)).mean()  # noqa: E731
    assert err(smooth.keypoints) < 0.5 * err(filled.keypoints)  # frame-to-frame jitter at least halved
