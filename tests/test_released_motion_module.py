"""The released motion modules of Champ / Moore-AnimateAnyone (motion_module.pth, positional encoding length 32) and
MusePose (length 128): their key layout is AnimateDiff v2's, which AnimateDiff-Evolved loads on the native path and the
pack's Add Motion Module loads in its pipe.

Key names and shapes: tests/data/released_layouts/champ_moore_motion_module.pth.json and musepose_motion_module.pth.json
(from the projects' own module definitions, docs/research/released_pose_models.md §1.5 and §2.3).

* The real-size AnimateDiff v2 file the ADE host tests run (tiny_models.ade_models: ``ade_mm_sd_v15_v2_full``, used by
  test_native.py::test_ade_context_windows_lora_reference_once_and_poses_per_window) is built with exactly Champ /
  Moore's key names and shapes: checked here on the meta device, so that host test runs this layout end to end in ADE.
* The pack's pipe loader (``load_motion_adapter``: the config it infers, then diffusers' AnimateDiff conversion) maps
  every released tensor onto diffusers' real-size MotionAdapter built on meta, and takes the positional-encoding length
  (32 / 128) from the file.  The tiny motion module the pipe's host workflows load is written in the same layout.
"""
import json
import os

import pytest
import torch

import tiny_models as tm

LAYOUTS = os.path.join(tm.HERE, "data", "released_layouts")
CASES = [("champ_moore_motion_module.pth.json", 32), ("musepose_motion_module.pth.json", 128)]


def _layout(name):
    with open(os.path.join(LAYOUTS, name)) as fh:
        return json.load(fh)["keys"]


@pytest.mark.parametrize("name,length", CASES)
def test_released_layout_is_the_animatediff_v2_layout_the_ade_host_test_runs(name, length):
    from diffusers import MotionAdapter

    want = _layout(name)
    with torch.device("meta"):  # the constructor tiny_models.ade_models writes the real-size ADE test file with
        ad = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                           motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=length,
                           use_motion_mid_block=True)
    got = {k: list(v.shape) for k, v in tm._original_motion_layout(dict(ad.state_dict()), length).items()}
    assert len(want) == 588 and got == want


@pytest.mark.parametrize("name,length", CASES)
def test_pipe_loader_maps_every_released_tensor_onto_a_real_size_motion_adapter_on_meta(name, length):
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    from performer_pkg.models.backbones.loaders import detect_family, infer_motion_adapter_config

    sd = {k: torch.empty(v, device="meta") for k, v in _layout(name).items()}
    assert detect_family(sd) == "motion_module"
    cfg = {k: v for k, v in infer_motion_adapter_config(sd).items() if not k.startswith("_")}
    assert cfg["motion_max_seq_length"] == length and cfg["use_motion_mid_block"]
    with torch.device("meta"):
        ad = MotionAdapter(**cfg)
    model = {k: tuple(v.shape) for k, v in ad.state_dict().items()}
    conv = {k: tuple(v.shape) for k, v in convert_animatediff_checkpoint_to_diffusers(sd).items()}
    # diffusers recomputes the sinusoidal positional encodings (one buffer per module) instead of reading them
    pe = {k for k in model if k.endswith("pos_embed.pe")}
    assert len(pe) == 21 and all(model[k][1] == length for k in pe)
    assert conv == {k: v for k, v in model.items() if k not in pe}
    ad.load_state_dict({**convert_animatediff_checkpoint_to_diffusers(sd),
                        **{k: torch.empty(model[k], device="meta") for k in pe}}, strict=True, assign=True)


def test_a_musepose_layout_motion_module_pth_samples_in_the_host(host):
    """End to end in the test host: a tiny-width motion module in MusePose's layout (AnimateDiff v2 names, 128
    positional encodings, a weights-only .pth as released; tiny_models.MUSEPOSE_MM_FILE) through Add Motion Module and
    Sample Video: it runs, and the frames differ from the same graph with the 32-position tiny module."""
    from host import output_files
    from test_host import load_api

    outs = []
    for mm in (os.path.basename(tm.MUSEPOSE_MM_FILE), "tiny_mm_sd_v15_v2.safetensors"):
        api = load_api("performer_text2video_smoke")
        api["2"]["inputs"]["motion_module"] = mm
        api["3"]["inputs"].update(frames=4, steps=2)
        for k in ("4", "5"):
            api.pop(k)
        res = host.run(api, timeout=600)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        outs.append([host.view(f) for f in output_files(res)])
    assert len(outs[0]) == 4 and outs[0] != outs[1]


def test_files_that_are_not_motion_modules_are_refused_naming_the_file(tmp_path):
    from performer_pkg.models.backbones.loaders import load_motion_adapter
    from performer_pkg.models.errors import BadModelFileError

    torch.save({"conv_out.weight": torch.zeros(320, 256, 3, 3)}, str(tmp_path / "pose_guider.pth"))
    with pytest.raises(BadModelFileError, match=r"pose_guider\.pth.*not an SD1\.5, SVD, ControlNet or AnimateDiff motion-module file"):
        load_motion_adapter(str(tmp_path / "pose_guider.pth"), device="cpu")
    torch.save(tm.motion_module_original_state(length=128), str(tmp_path / "motion_module.pth"))
    raw = open(tmp_path / "motion_module.pth", "rb").read()
    open(tmp_path / "truncated.pth", "wb").write(raw[: len(raw) // 2])
    with pytest.raises(BadModelFileError, match=r"truncated\.pth"):
        load_motion_adapter(str(tmp_path / "truncated.pth"), device="cpu")
    with pytest.raises(BadModelFileError, match=r"(?s)evil\.pth.*pickled code is refused"):
        load_motion_adapter(tm.evil_checkpoint(tmp_path / "evil.pth", "down_blocks.0.motion_modules.0.x"), device="cpu")
    assert load_motion_adapter(str(tmp_path / "motion_module.pth"), device="cpu").config["motion_max_seq_length"] == 128
