"""Pose extractors on real inputs: MediaPipe on a real photo, DWPose end to end through ONNX files with the
real I/O signature, the content-keyed cache, and bad inputs."""
import numpy as np
import torch
import pytest

import tiny_models as tm
from performer_pkg.models.errors import BadInputError, MissingModelError
from performer_pkg.models.pose.extract import DWPoseExtractor, MediaPipeExtractor, PoseCache, require_person


def test_mediapipe_finds_the_astronaut():
    import skimage.data

    photo = skimage.data.astronaut()  # 512×512: face at about x 170–280, y 60–170; shoulders near y 240–260
    pose = require_person(MediaPipeExtractor(video=False)(photo[None]), "astronaut")
    k = pose.keypoints[0, 0]
    nose, lsh, rsh, lwr, rwr = k[0], k[5], k[6], k[9], k[10]
    assert nose[2] > 0.5 and 180 <= nose[0] <= 270 and 70 <= nose[1] <= 170, nose  # head inside the face box (±40 px)
    assert lsh[2] > 0.5 and rsh[2] > 0.5
    assert lsh[0] > nose[0] + 40 and rsh[0] < nose[0] - 40  # subject's left shoulder on image right
    for sh in (lsh, rsh):
        assert nose[1] + 60 <= sh[1] <= 330, sh  # shoulders below the head
    for wr, sh in ((lwr, lsh), (rwr, rsh)):  # hands hang low, at the bottom of the frame
        assert wr[1] > sh[1] + 120 and 60 <= wr[0] <= 420, wr
    face = k[23:91]
    assert (face[:, 2] > 0).sum() == 68  # the face mesh maps onto the 68 landmarks
    fx, fy = face[:, 0], face[:, 1]
    assert 150 <= fx.min() and fx.max() <= 300 and 40 <= fy.min() and fy.max() <= 200


def test_dwpose_onnx_pair_end_to_end(models_tree):
    P = models_tree[1]
    ex = DWPoseExtractor(P["dw_det"], P["dw_pose"])
    frames = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3)).astype(np.uint8)
    pose = ex(frames, fps=12)
    assert pose.keypoints.shape == (3, 1, 133, 3) and pose.fps == 12
    # independent re-computation of DWPose's box -> crop -> SimCC decode
    x0, y0, x1, y1 = tm.DW_BOX
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    s = np.array([x1 - x0, y1 - y0]) * 1.25
    s = np.array([s[0], s[0] / (288 / 384)]) if s[0] > s[1] * 288 / 384 else np.array([s[1] * 288 / 384, s[1]])
    want = c - s / 2 + tm.DW_UV * s
    np.testing.assert_allclose(pose.keypoints[0, 0, :, :2], want, atol=0.05)
    np.testing.assert_allclose(pose.keypoints[:, 0, :, 2], 0.7, atol=1e-6)
    with pytest.raises(MissingModelError, match="performer_pose"):
        DWPoseExtractor(P["dw_det"] + ".missing", P["dw_pose"])


def test_dwpose_torchscript_pair_as_controlnet_aux_ships_it_equals_the_onnx_pair(models_tree, tmp_path):
    """comfyui_controlnet_aux's TorchScript files (same outputs as the ONNX pair; the detector in fp16, the estimator
    traced at batch 5): the same poses as the ONNX pair, one person padded to a batch of 5 and cut back."""
    import os

    from performer_pkg.models.errors import BadModelFileError

    P, root = models_tree[1], models_tree[0]
    frames = np.random.default_rng(1).integers(0, 255, (2, 256, 256, 3)).astype(np.uint8)
    onnx_pose = DWPoseExtractor(os.path.join(root, P["dw_det"]), os.path.join(root, P["dw_pose"]))(frames)
    ex = DWPoseExtractor(os.path.join(root, P["dw_det_ts"]), os.path.join(root, P["dw_pose_ts"]))
    assert ex.pose.fixed_batch == 5 and ex.pose_hw == (384, 288)
    ts_pose = ex(frames)
    np.testing.assert_allclose(ts_pose.keypoints, onnx_pose.keypoints, atol=1e-4)

    tm.evil_checkpoint(tmp_path / "evil.torchscript.pt", "w")
    with pytest.raises(BadModelFileError, match=r"evil\.torchscript\.pt as TorchScript"):
        DWPoseExtractor(str(tmp_path / "evil.torchscript.pt"), os.path.join(root, P["dw_pose_ts"]))
    torch.save({"w": torch.zeros(2)}, str(tmp_path / "weights_only.pt"))
    with pytest.raises(BadModelFileError, match=r"weights_only\.pt as TorchScript"):
        DWPoseExtractor(os.path.join(root, P["dw_det_ts"]), str(tmp_path / "weights_only.pt"))


def test_cache_is_keyed_by_content(models_tree):
    P = models_tree[1]
    ex = DWPoseExtractor(P["dw_det"], P["dw_pose"])
    cache = PoseCache(size=2)
    frames = np.zeros((2, 256, 256, 3), np.uint8)
    a = cache.extract(ex, frames)
    b = cache.extract(ex, frames.copy())
    assert cache.hits == 1 and np.array_equal(a.keypoints, b.keypoints)
    frames[1, 0, 0, 0] = 1
    cache.extract(ex, frames)
    assert cache.hits == 1  # one changed pixel is another video


def test_bad_extraction_inputs():
    ex = MediaPipeExtractor(video=False)
    with pytest.raises(BadInputError, match="non-empty batch"):
        ex(np.zeros((0, 64, 64, 3), np.uint8))
    with pytest.raises(BadInputError, match="No person found in any frame of driving video"):
        require_person(ex(np.zeros((2, 128, 128, 3), np.uint8)), "driving video")
    with pytest.raises(BadInputError, match="NaN"):
        ex(np.full((1, 64, 64, 3), np.nan, np.float32))


def test_openpose_results_map_onto_the_133_layout():
    """controlnet_aux's own result types (what its OpenposeDetector.detect_poses returns) map onto our layout."""
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    from performer_pkg.models.pose import sequence as P
    from performer_pkg.models.pose.extract import openpose_result_to_133

    body = [Keypoint(x=0.1 + 0.01 * i, y=0.2 + 0.02 * i) for i in range(18)]
    body[4] = None  # right wrist not found
    hand = [Keypoint(x=0.5 + 0.001 * j, y=0.6) for j in range(21)]
    hand[3] = Keypoint(x=-1.0, y=-1.0)  # absent hand point as controlnet_aux writes it
    face = [Keypoint(x=0.3, y=0.1 + 0.001 * j) for j in range(70)]
    k = openpose_result_to_133([PoseResult(BodyResult(body, 10.0, 17), hand, None, face)], 200, 100, 4)
    assert k.shape == (1, 133, 3)
    for i, c in enumerate(P.OP18_FROM_COCO):
        if c is None:
            continue
        if i == 4:
            assert k[0, c, 2] == 0
        else:
            np.testing.assert_allclose(k[0, c], (body[i].x * 200, body[i].y * 100, 1.0), rtol=1e-6)
    assert k[0, P.LHAND.start + 3, 2] == 0 and k[0, P.LHAND.start + 4, 2] == 1
    assert (k[0, P.RHAND, 2] == 0).all() and (k[0, P.FACE, 2] == 1).all()


def test_openpose_missing_weights_name_the_files(tmp_path):
    from performer_pkg.models.pose.extract import OpenPoseExtractor

    with pytest.raises(MissingModelError, match="body_pose_model.pth"):
        OpenPoseExtractor(str(tmp_path))


def test_openpose_loads_real_architecture_files_safely(tmp_path):
    """Annotator files with controlnet_aux's real architectures and key names (random weights, ~480 MB) load with
    weights-only torch.load and run; random weights find nobody.  A .pth that would run code is refused."""
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    from performer_pkg.models.errors import BadModelFileError
    from performer_pkg.models.pose.extract import OpenPoseExtractor

    torch.manual_seed(0)
    for cls, name in ((bodypose_model, "body_pose_model.pth"), (handpose_model, "hand_pose_model.pth")):
        torch.save({".".join(k.split(".")[1:]): v for k, v in cls().state_dict().items()}, tmp_path / name)
    torch.save(FaceNet().state_dict(), tmp_path / "facenet.pth")
    pose = OpenPoseExtractor(str(tmp_path))(np.zeros((1, 96, 96, 3), np.uint8))
    assert pose.keypoints.shape == (1, 1, 133, 3) and (pose.keypoints[..., 2] == 0).all()

    tm.evil_checkpoint(tmp_path / "body_pose_model.pth", "x")
    with pytest.raises(BadModelFileError, match="Could not load the OpenPose annotator weights"):
        OpenPoseExtractor(str(tmp_path), hands=False, face=False)


def _tiny_densepose(path):
    """A TorchScript module with DensePose's real I/O: uint8 (3,H,W) -> boxes, coarse, fine, u, v (S = 8)."""
    import torch

    class TinyDensePose(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            h, w = x.shape[1], x.shape[2]
            box = torch.tensor([[w * 0.25, h * 0.125, w * 0.75, h * 0.875]]) + 0 * x.float().mean()
            coarse = torch.zeros(1, 2, 8, 8)
            coarse[0, 1, :, 1:7] = 1.0  # body in the middle six columns
            fine = torch.zeros(1, 25, 8, 8)
            fine[0, 2, :4] = 1.0  # torso (part 2) on top
            fine[0, 23, 4:] = 1.0  # head (part 23) below: any layout will do for the test
            u = torch.full((1, 25, 8, 8), 0.25)
            v = torch.full((1, 25, 8, 8), 0.75)
            return box, coarse, fine, u, v

    torch.jit.script(TinyDensePose()).save(str(path))


def test_densepose_torchscript_colour_convention(tmp_path):
    import cv2

    from performer_pkg.models.pose.densepose import DensePoseExtractor

    p = tmp_path / "densepose_r50_fpn_dl.torchscript"
    _tiny_densepose(p)
    colour, iuv = DensePoseExtractor(str(p))(np.zeros((1, 64, 64, 3), np.uint8), cmap="viridis")
    parula = lambda part: cv2.applyColorMap(np.uint8([[int(part * 255 / 24)]]), cv2.COLORMAP_PARULA)[0, 0, ::-1]  # noqa: E731
    np.testing.assert_array_equal(colour[0, 16, 32], parula(2))  # inside the box, upper half: part 2
    np.testing.assert_array_equal(colour[0, 48, 32], parula(23))  # lower half: part 23
    np.testing.assert_array_equal(colour[0, 2, 2], (68, 1, 84))  # MagicAnimate's viridis background
    np.testing.assert_allclose(iuv[0, 16, 32], (2 / 24, 0.25, 0.75), atol=1e-6)
    assert (iuv[0, 2, 2] == 0).all()
    parula_bg, _ = DensePoseExtractor(str(p))(np.zeros((1, 64, 64, 3), np.uint8), cmap="parula")
    assert (parula_bg[0, 2, 2] == 0).all()


def test_person_in_some_frames_only_keeps_absent_points():
    """Documented behaviour: frames without a person have absent points (no error); Clean Pose can fill short gaps."""
    import skimage.data

    photo = skimage.data.astronaut()
    frames = np.stack([photo, np.full_like(photo, 30), photo])
    pose = require_person(MediaPipeExtractor(video=False)(frames))
    present = pose.person_present()[:, 0]
    assert present.tolist() == [True, False, True]
    assert (pose.keypoints[1, 0, :, 2] == 0).all()


def test_dwpose_torchscript_files_in_the_host(host):
    """End to end in the test host: Extract Pose (DWPose ONNX / TorchScript) with comfyui_controlnet_aux's file names
    (the tiny TorchScript pair of tiny_models.dwpose_torchscript_pair) on the reference photo, then Draw Skeleton Maps."""
    import json

    from host import output_files

    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "performer_reference.png"}},
           "2": {"class_type": "PerformerExtractPoseDWPose", "inputs": {
               "images": ["1", 0], "detector": "yolox_l.torchscript.pt", "estimator": "dw-ll_ucoco_384_bs5.torchscript.pt",
               "fps": 8.0, "max_people": 4}},
           "3": {"class_type": "PerformerDrawPose", "inputs": {"pose": ["2", 0], "width": 0, "height": 0, "body": True,
                                                               "hands": True, "face": True, "stick_width": 4}},
           "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "performer/dwpose_ts"}}}
    res = host.run(api, timeout=600)
    assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
    assert len(output_files(res)) == 1
