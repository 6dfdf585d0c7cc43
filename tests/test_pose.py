"""Pose sequence type: OpenPose JSON and file round trips, the ControlNet drawing convention, landmarks,
reference-frame selection."""
import json
import math

import numpy as np
import pytest

from performer_pkg.models import pose as P
from performer_pkg.models.errors import BadInputError


def hand_made_pose(w=512, h=512, dx=0.0, wave=0.0):
    """A standing person: every body, foot, face and hand point placed by hand (pixels)."""
    k = np.zeros((1, 1, 133, 3), np.float32)
    body = {0: (256, 96), 1: (246, 86), 2: (266, 86), 3: (234, 92), 4: (278, 92), 5: (216, 150), 6: (296, 150),
            7: (196, 220), 8: (316, 220), 9: (186, 290), 10: (326, 290), 11: (230, 300), 12: (282, 300),
            13: (226, 390), 14: (286, 390), 15: (224, 470), 16: (288, 470)}
    for i, (x, y) in body.items():
        k[0, 0, i] = (x + dx, y, 0.9)
    k[0, 0, 10, :2] += (20 * math.sin(wave), -40 * math.sin(wave))
    feet = [(214, 486), (232, 488), (226, 474), (298, 486), (280, 488), (286, 474)]
    k[0, 0, 17:23] = [(x + dx, y, 0.8) for x, y in feet]
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    k[0, 0, 23:91, 0] = 256 + dx + 22 * np.cos(t)
    k[0, 0, 23:91, 1] = 100 + 28 * np.sin(t)
    k[0, 0, 23:91, 2] = 0.7
    for sl, (wx, wy), sgn in ((P.LHAND, body[9], -1), (P.RHAND, body[10], 1)):
        pts = [(wx, wy)]
        for finger in range(5):
            for j in range(1, 5):
                pts.append((wx + sgn * (finger * 5 - 10), wy + 8 * j))
        k[0, 0, sl, :2] = np.array(pts) + (dx, 0)
        k[0, 0, sl, 2] = 0.6
    return P.PoseSequence(k, w, h, fps=12.0)


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
