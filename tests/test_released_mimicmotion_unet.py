"""MimicMotion's finetuned UNet (``unet.*`` of MimicMotion_1-1.pth: diffusers' UNetSpatioTemporalConditionModel, SVD-xt's
layout) as core weight patches on the SVD MODEL (nodes/native_released.py, Apply MimicMotion UNet).

Key names and shapes: tests/data/released_layouts/MimicMotion_1-1.pth.json (docs/research/released_pose_models.md §3).
Independent check: diffusers' own UNetSpatioTemporalConditionModel, built at the tiny core SVD's width with random
weights, and core's UNet carrying those weights through the patches give the same output on the same inputs.
"""
import json
import os

import pytest
import torch

import tiny_models as tm

tm.ensure_comfy_importable()

LAYOUT = os.path.join(tm.HERE, "data", "released_layouts", "MimicMotion_1-1.pth.json")


def _diffusers_unet(core_model, seed=3):
    from diffusers import UNetSpatioTemporalConditionModel

    from performer_pkg.models.backbones.convert_svd import unet_config

    cfg, _ = unet_config(core_model.model.diffusion_model.state_dict())
    unet = UNetSpatioTemporalConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return unet.eval()


def _checkpoint(tmp_path, unet, name="MimicMotion_1-1.pth"):
    from test_released_pose_guider import mimic_state

    sd = {"unet." + k: v.half() for k, v in unet.state_dict().items()}
    sd.update({k: v.half() for k, v in mimic_state(prefixed=True).items()})  # the file also holds the PoseNet
    torch.save(sd, str(tmp_path / name))
    return str(tmp_path / name)


def test_released_layout_maps_onto_cores_real_size_svd_unet_on_meta():
    """Every unet.* name of the released file is the diffusers name of one of core's real-size SVD-xt UNet weights (the
    pack's SVD key table), with core's shape; nothing is left over on either side."""
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from performer_pkg.models.backbones.convert_svd import unet_keys_to_diffusers

    with open(LAYOUT) as fh:
        keys = json.load(fh)["keys"]
    unet = {k[len("unet."):]: v for k, v in keys.items() if k.startswith("unet.")}
    assert len(unet) == 1428 and len(keys) == 1428 + 19  # as docs/research records (UNet + PoseNet)
    args = {**tm.svd_unet_args(adm_in_channels=768), "model_channels": 320, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2,
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "context_dim": 1024, "num_head_channels": 64}
    assert comfy.supported_models.SVD_img2vid.unet_config["context_dim"] == 1024
    with torch.device("meta"):
        core = {k: list(v.shape) for k, v in UNetModel(**args, operations=comfy.ops.disable_weight_init).state_dict().items()}
    names = {next(iter(unet_keys_to_diffusers({k: None}, 2))): k for k in core}
    assert len(names) == len(core) and set(names) == set(unet)
    assert all(unet[d] == core[c] for d, c in names.items())


def test_patched_core_svd_equals_diffusers_unet_and_the_original_is_untouched(tmp_path):
    import comfy.model_management

    from performer_pkg.nodes.native_released import apply_mimicmotion_unet

    core = tm.core_svd_patcher()
    before = {k: v.clone() for k, v in core.model.diffusion_model.state_dict().items()}
    du = _diffusers_unet(core)
    m = apply_mimicmotion_unet(core, _checkpoint(tmp_path, du))
    assert len(m.patches) == len(before) and not core.patches
    frames, g = 3, torch.Generator().manual_seed(4)
    x = torch.randn(1, frames, 8, 8, 8, generator=g)
    ctx = torch.randn(1, 1, tm.SVD["context_dim"], generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    c_noise = torch.tensor(0.25 * torch.log(torch.tensor(2.0)).item())
    with torch.no_grad():
        want = du(x, c_noise, encoder_hidden_states=ctx, added_time_ids=ids).sample[0]
        y = du.add_time_proj(ids.flatten()).reshape(1, -1)
    comfy.model_management.load_models_gpu([m])
    try:
        with torch.no_grad():
            got = m.model.diffusion_model(x[0], timesteps=c_noise.expand(frames), context=ctx.repeat(frames, 1, 1),
                                          y=y.repeat(frames, 1), num_video_frames=frames)
        ref = 1e-2 * want.abs().max()  # the file is fp16, as the released one
        assert got.shape == want.shape and (got - want).abs().max() <= ref, (got - want).abs().max()
    finally:
        m.detach()
    assert all(torch.equal(v, core.model.diffusion_model.state_dict()[k]) for k, v in before.items())


def test_wrong_files_and_models_are_refused(tmp_path):
    from performer_pkg.models.errors import BadInputError, BadModelFileError
    from performer_pkg.nodes.native_released import apply_mimicmotion_unet

    core = tm.core_svd_patcher()
    du = _diffusers_unet(core)
    path = _checkpoint(tmp_path, du)
    with pytest.raises(BadInputError, match="for the SVD MODEL"):
        apply_mimicmotion_unet(tm.core_sd15_patcher(), path)
    from test_released_pose_guider import mimic_state

    torch.save(mimic_state(prefixed=False), str(tmp_path / "mimic_motion_pose_net.pth"))
    with pytest.raises(BadModelFileError, match=r"mimic_motion_pose_net\.pth is not a MimicMotion checkpoint"):
        apply_mimicmotion_unet(core, str(tmp_path / "mimic_motion_pose_net.pth"))
    sd = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in sd.items() if "time_mixer" not in k}, str(tmp_path / "cut.pth"))
    with pytest.raises(BadModelFileError, match=r"cut\.pth: its UNet does not fit this SVD MODEL.*missing.*time_mixer"):
        apply_mimicmotion_unet(core, str(tmp_path / "cut.pth"))
    raw = open(path, "rb").read()
    open(tmp_path / "truncated.pth", "wb").write(raw[: len(raw) // 2])
    with pytest.raises(BadModelFileError, match=r"truncated\.pth"):
        apply_mimicmotion_unet(core, str(tmp_path / "truncated.pth"))


def test_bundled_mimicmotion_workflow_in_the_host_feeds_the_posenet_every_frame(host, released_files):
    """The bundled MimicMotion workflow in the test host (a MimicMotion_1-1.pth in the released layout holding the
    real-size SVD test file's UNet with conv_out.bias moved, plus a random PoseNet; tiny_models.mimicmotion_checkpoint):
    it runs with both nodes reading the file, and the PoseNet adds frames 0–3 in the conditional half of every call.
    (That the patched UNet is MimicMotion's is the numerical test above.)"""
    from host import output_files
    from test_host import load_api

    api = load_api("performer_native_mimicmotion")
    api["99"] = {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["8", 0]}}
    api["10"]["inputs"]["model"] = ["99", 0]
    res = host.run(api, timeout=900)
    assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
    assert len(output_files(res)) == 4
    counts = host.get("/performer_test/alive")["counts"]["ReleasedPoseGuiderPatch"]
    assert counts["last_calls"] and all(c == [0, 1, 2, 3] for c in counts["last_calls"]), counts
