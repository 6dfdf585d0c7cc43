"""The released pose guider of Moore-AnimateAnyone / MusePose (pose_guider.pth) on core's MODEL
(models/guidance/pose_guider.py, nodes/native_released.py).

Key names and shapes: tests/data/released_layouts/moore_musepose_pose_guider.pth.json (from the projects' own module
definition, docs/research/released_pose_models.md §2).  The forward is checked against the convolution chain written
out here; the native patch on core's tiny SD1.5 model (its conv_in width, 32, as the guider's output width: the same
key layout at a tiny width) and, end to end in the test host, on a real-size SD1.5 checkpoint.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm

tm.ensure_comfy_importable()

LAYOUT = os.path.join(tm.HERE, "data", "released_layouts", "moore_musepose_pose_guider.pth.json")


def released_state(out_channels=320, seed=0, scale=0.1):
    with open(LAYOUT) as fh:
        keys = json.load(fh)["keys"]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.startswith("conv_out"):
            shape = [out_channels] + shape[1:]
        out[k] = scale * torch.randn(shape, generator=g)
    return out


def test_released_layout_loads_strictly_and_the_forward_is_the_convolution_chain(tmp_path):
    from performer_pkg.models.guidance.pose_guider import load_released_pose_guider

    sd = released_state()
    p = tmp_path / "pose_guider.pth"
    torch.save({k: v.half() for k, v in sd.items()}, str(p))  # the released file: a plain dict of tensors
    g = load_released_pose_guider(str(p))
    assert sum(v.numel() for v in g.state_dict().values()) == 1_086_480  # the count docs/research records
    x = torch.rand(2, 3, 64, 48)
    w = {k: v.half().float() for k, v in sd.items()}
    h = F.silu(F.conv2d(x, w["conv_in.weight"], w["conv_in.bias"], padding=1))
    for i in range(6):
        h = F.silu(F.conv2d(h, w[f"blocks.{i}.weight"], w[f"blocks.{i}.bias"], padding=1, stride=2 if i % 2 else 1))
    want = F.conv2d(h, w["conv_out.weight"], w["conv_out.bias"], padding=1)
    with torch.no_grad():
        got = g(x)
    assert got.shape == (2, 320, 8, 6) and torch.allclose(got, want, atol=1e-5)


def test_wrong_files_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from performer_pkg.models.errors import BadModelFileError
    from performer_pkg.models.guidance.pose_guider import load_released_pose_guider

    sd = released_state()
    cases = {
        "missing.pth": {k: v for k, v in sd.items() if k != "blocks.3.bias"},
        "extra.pth": {**sd, "blocks.6.weight": torch.zeros(1)},
        "shape.pth": {**sd, "blocks.1.weight": torch.zeros(33, 16, 3, 3)},
    }
    for name, state in cases.items():
        torch.save(state, str(tmp_path / name))
        with pytest.raises(BadModelFileError, match=name.replace(".", r"\.") + ".*layout"):
            load_released_pose_guider(str(tmp_path / name))
    save_file({"image_proj.proj.weight": torch.zeros(4, 4)}, str(tmp_path / "ip-adapter.safetensors"))
    with pytest.raises(BadModelFileError, match=r"ip-adapter\.safetensors is not an AnimateAnyone / MusePose pose guider"):
        load_released_pose_guider(str(tmp_path / "ip-adapter.safetensors"))

    tm.evil_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(BadModelFileError, match=r"(?s)evil\.pth.*pickled code is refused"):
        load_released_pose_guider(str(tmp_path / "evil.pth"))


def _tiny_guider(tmp_path, width=32):
    from performer_pkg.models.guidance.pose_guider import load_released_pose_guider

    torch.save(released_state(out_channels=width, seed=2, scale=0.3), str(tmp_path / "pose_guider.pth"))
    return load_released_pose_guider(str(tmp_path / "pose_guider.pth"))


def _sample(model, frames=3, steps=2, seed=0):
    import comfy.sample

    g = torch.Generator().manual_seed(seed)
    ctx = tm.SD15["context_dim"]
    pos, neg = [[torch.randn(1, 77, ctx, generator=g), {}]], [[torch.randn(1, 77, ctx, generator=g), {}]]
    noise = torch.randn(frames, 4, 8, 8, generator=g)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", pos, neg, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)


def test_native_patch_adds_each_frames_features_after_conv_in_in_both_halves(tmp_path):
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import REFERENCE_PASS
    from performer_pkg.nodes.native_released import apply_released_pose_guider

    model = tm.core_sd15_patcher()
    before = repr(model.model_options)
    guider = _tiny_guider(tmp_path)
    poses = torch.rand(3, 16, 16, 3, generator=torch.Generator().manual_seed(5))
    base = _sample(model)
    m0, p0 = apply_released_pose_guider(model, guider, poses, 0.0)
    assert torch.equal(_sample(m0), base) and p0.last_calls == []
    m1, p1 = apply_released_pose_guider(model, guider, poses, 1.0)
    out = _sample(m1)
    assert (out - base).abs().max() > 1e-3 and p1.runs == 1 and p1.last_calls == [[0, 1, 2]] * 2
    assert torch.equal(_sample(model), base) and repr(model.model_options) == before  # the original untouched

    # the hook itself: first block only, both CFG halves, each row its frame's features, nothing in the reference pass
    feats = p1.features(3, 8, 8, "cpu")
    from performer_pkg.nodes.native_released import _Run

    p1.run = _Run(feats, None)
    h = torch.zeros(6, 32, 8, 8)
    topts = {"block": ("input", 0), "cond_or_uncond": [1, 0]}
    assert torch.equal(p1.input_block_patch(h, topts), feats.repeat(2, 1, 1, 1))
    assert torch.equal(p1.input_block_patch(h, {**topts, "block": ("input", 1)}), h)
    assert torch.equal(p1.input_block_patch(h, {**topts, REFERENCE_PASS: True}), h)
    p1.run = None

    with pytest.raises(BadInputError, match="already has a released pose encoder"):
        apply_released_pose_guider(m1, guider, poses)
    with pytest.raises(BadInputError, match="320-channel features but the model's first block gives 32"):
        apply_released_pose_guider(model, _tiny_guider(tmp_path, 320), poses)
    short, _ = apply_released_pose_guider(model, guider, poses[:2])
    with pytest.raises(Exception, match="poses has 2 frames but 3 frames are sampled"):
        _sample(short)


def test_core_context_windows_get_their_own_frames_poses(tmp_path):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    from performer_pkg.nodes.native_released import apply_released_pose_guider

    m, patch = apply_released_pose_guider(tm.core_sd15_patcher(), _tiny_guider(tmp_path), torch.rand(3, 16, 16, 3))
    out = ContextWindowsManualNode.execute(m, context_length=2, context_overlap=1, context_schedule="standard_static",
                                           context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0)
    windowed = out[0] if isinstance(out, tuple) else out.result[0]
    _sample(windowed, frames=3, steps=2)  # core 0.3.75's handler needs steps = frames - 1 for frames-in-batch models
    assert patch.last_calls == [[0, 1], [1, 2]] * 2


def test_pose_guider_on_a_real_size_sd15_checkpoint_in_the_host(host, models_tree):
    """End to end in the test host: the released-layout pose_guider.pth (random, real size) in models/performer/adapters,
    core's CheckpointLoaderSimple on a real-size SD1.5 checkpoint (the AnimateDiff-Evolved test files), Load Pose →
    Draw Skeleton Maps → Apply Pose Guider → core KSampler over 4 frames: it runs, each call got frames 0–3, and the
    frames differ from strength 0's."""
    import numpy as np
    from PIL import Image

    from host import ADE_DIR, ADE_MISSING, output_files, sd15_sampling_graph

    if not os.path.isdir(ADE_DIR):
        pytest.skip(ADE_MISSING + "; the real-size SD1.5 test checkpoint is written with the ADE files")
    root = models_tree[0]
    torch.save({k: v.half() for k, v in released_state(seed=4, scale=0.05).items()},
               os.path.join(root, "performer", "adapters", "pose_guider.pth"))

    def api(strength):
        g = sd15_sampling_graph(os.path.basename(tm.ADE_SD15_FILE), ["99", 0], f"pose_guider_{strength}", frames=4,
                                text="a person dancing")
        g.update({
            "2": {"class_type": "PerformerLoadPose", "inputs": {"file": "performer_driving_pose.json"}},
            "3": {"class_type": "PerformerDrawPose", "inputs": {"pose": ["2", 0], "width": 64, "height": 64, "body": True,
                                                                "hands": True, "face": True, "stick_width": 2}},
            "10": {"class_type": "ImageFromBatch", "inputs": {"image": ["3", 0], "batch_index": 0, "length": 4}},
            "4": {"class_type": "PerformerApplyPoseGuider", "inputs": {
                "model": ["1", 0], "pose_guider": "pose_guider.pth", "poses": ["10", 0],
                "colours": "controlnet (AnimateAnyone)", "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
            "99": {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["4", 0]}},
        })
        return g

    frames = []
    for strength in (1.0, 0.0):
        res = host.run(api(strength), timeout=900)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        files = output_files(res)
        assert len(files) == 4
        frames.append([np.asarray(Image.open(__import__("io").BytesIO(host.view(f)))) for f in files])
        if strength:
            counts = host.get("/performer_test/alive")["counts"]["ReleasedPoseGuiderPatch"]
            assert counts["runs"] >= 1 and counts["last_calls"] == [[0, 1, 2, 3]] * 2, counts
    assert any(not np.array_equal(a, b) for a, b in zip(*frames))


# ----------------------------------------------------------------------------- MimicMotion's PoseNet on SVD

def mimic_state(out_channels=320, seed=0, scale=0.1, prefixed=True):
    with open(os.path.join(tm.HERE, "data", "released_layouts", "MimicMotion_1-1.pth.json")) as fh:
        keys = {k: v for k, v in json.load(fh)["keys"].items() if k.startswith("pose_net.")}
    assert len(keys) == 19
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.startswith("pose_net.final_proj"):
            shape = [out_channels] + shape[1:]
        out[k if prefixed else k[len("pose_net."):]] = (torch.ones(shape) * 1.13 if k.endswith("scale")
                                                       else scale * torch.randn(shape, generator=g))
    return out


def test_mimicmotion_posenet_layout_forward_and_refusals(tmp_path):
    from performer_pkg.models.errors import BadModelFileError
    from performer_pkg.models.guidance.pose_guider import load_mimicmotion_pose_net

    sd = mimic_state()
    ckpt = {**sd, "unet.conv_in.weight": torch.zeros(320, 8, 3, 3)}  # the checkpoint also holds the UNet: skipped
    torch.save({k: v.half() for k, v in ckpt.items()}, str(tmp_path / "MimicMotion_1-1.pth"))
    net = load_mimicmotion_pose_net(str(tmp_path / "MimicMotion_1-1.pth"))
    assert sum(v.numel() for v in net.state_dict().values()) == 205_557
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    w = {k[len("pose_net."):]: v.half().float() for k, v in sd.items()}
    h = F.silu(F.conv2d(x, w["conv_layers.0.weight"], w["conv_layers.0.bias"], padding=1))
    for i in (2, 6, 10):
        h = F.silu(F.conv2d(h, w[f"conv_layers.{i}.weight"], w[f"conv_layers.{i}.bias"], stride=2, padding=1))
        h = F.silu(F.conv2d(h, w[f"conv_layers.{i + 2}.weight"], w[f"conv_layers.{i + 2}.bias"], padding=1))
    h = F.silu(F.conv2d(h, w["conv_layers.14.weight"], w["conv_layers.14.bias"], padding=1))
    want = F.conv2d(h, w["final_proj.weight"], w["final_proj.bias"]) * w["scale"]
    with torch.no_grad():
        got = net(x)
    assert got.shape == (2, 320, 8, 6) and torch.allclose(got, want, atol=1e-5)
    from safetensors.torch import save_file

    save_file(mimic_state(prefixed=False), str(tmp_path / "mimic_motion_pose_net.safetensors"))  # kijai's extracted file
    assert load_mimicmotion_pose_net(str(tmp_path / "mimic_motion_pose_net.safetensors")).scale.item() == pytest.approx(1.13)
    torch.save(released_state(), str(tmp_path / "pose_guider.pth"))  # AnimateAnyone's guider is another model
    with pytest.raises(BadModelFileError, match=r"pose_guider\.pth is not a MimicMotion checkpoint or PoseNet"):
        load_mimicmotion_pose_net(str(tmp_path / "pose_guider.pth"))
    torch.save({k: v for k, v in sd.items() if "conv_layers.4" not in k}, str(tmp_path / "cut.pth"))
    with pytest.raises(BadModelFileError, match=r"cut\.pth does not have the MimicMotion PoseNet's layout"):
        load_mimicmotion_pose_net(str(tmp_path / "cut.pth"))


def test_posenet_on_core_svd_adds_to_the_conditional_half_only_and_refuses_sd15(tmp_path):
    """On core's tiny SVD model (conv_in width 64: the same key layout at that width): strength 0 exact, the video
    changes, rows of the unconditional half get nothing, images map to [−1, 1] with red and blue swapped, the
    original is unchanged; Pose Guider and PoseNet each refuse the other's model family."""
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.guidance.pose_guider import load_mimicmotion_pose_net
    from performer_pkg.nodes.native_released import _Run, apply_released_pose_guider

    torch.save(mimic_state(out_channels=64, seed=3, scale=0.3, prefixed=False), str(tmp_path / "pn.pth"))
    net = load_mimicmotion_pose_net(str(tmp_path / "pn.pth"))
    svd = tm.core_svd_patcher()
    before = repr(svd.model_options)
    poses = torch.rand(3, 16, 16, 3, generator=torch.Generator().manual_seed(6))
    m, patch = apply_released_pose_guider(svd, net, poses, 1.0, True, mimicmotion=True)
    feats = patch.features(3, 8, 8, "cpu")  # at 8 × the latent size, red and blue swapped, in [−1, 1]
    pix = F.interpolate(poses.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(feats, net(pix[:, [2, 1, 0]] * 2 - 1), atol=1e-6)
    patch.run = _Run(feats, None)
    h = torch.zeros(6, 64, 8, 8)
    out = patch.input_block_patch(h, {"block": ("input", 0), "cond_or_uncond": [1, 0]})
    assert torch.equal(out[:3], torch.zeros(3, 64, 8, 8)) and torch.equal(out[3:], feats)  # uncond rows untouched
    patch.run = None
    from test_native import _svd_sample

    base = _svd_sample(svd, frames=3)
    m0, _ = apply_released_pose_guider(svd, net, poses, 0.0, True, mimicmotion=True)
    assert torch.equal(_svd_sample(m0, frames=3), base)
    assert (_svd_sample(m, frames=3) - base).abs().max() > 1e-3 and patch.last_calls == [[0, 1, 2]] * 3
    assert repr(svd.model_options) == before
    with pytest.raises(BadInputError, match="Apply Pose Guider is for SD1.5-family models.*PoseNet"):
        apply_released_pose_guider(svd, net, poses)
    with pytest.raises(BadInputError, match="PoseNet \\(MimicMotion\\) is for SVD models"):
        apply_released_pose_guider(tm.core_sd15_patcher(), net, poses, mimicmotion=True)


def test_an_untrained_encoder_is_named_in_a_warning_not_silently_ignored(tmp_path, caplog):
    """A pose encoder whose output layer is all zeros (freshly initialised: the pack's controller before training, or a
    released file with a zeroed conv_out / final_proj) adds nothing: applying it logs a warning that says so."""
    import logging

    from performer_pkg.models.guidance.pose_controller import PoseController, warn_if_silent
    from performer_pkg.nodes.native_released import apply_released_pose_guider

    with caplog.at_level(logging.WARNING):
        assert warn_if_silent(PoseController(), "fresh")
    assert "fresh: its output layer is all zeros" in caplog.text
    caplog.clear()
    guider = _tiny_guider(tmp_path)
    with caplog.at_level(logging.WARNING):
        apply_released_pose_guider(tm.core_sd15_patcher(), guider, torch.rand(3, 16, 16, 3))
    assert "all zeros" not in caplog.text
    with torch.no_grad():
        guider.conv_out.weight.zero_()
        guider.conv_out.bias.zero_()
    with caplog.at_level(logging.WARNING):
        apply_released_pose_guider(tm.core_sd15_patcher(), guider, torch.rand(3, 16, 16, 3))
    assert "Apply Pose Guider: the encoder for poses: its output layer is all zeros" in caplog.text
