"""One-shot personalisation on the tiny AnimateDiff pipe: loss goes down, only the intended tensors change,
interruption leaves a loadable checkpoint, resume, apply-to-clone, and bad inputs."""
import hashlib
import os

import pytest
import torch

import tiny_models as tm
from performer_pkg.models.backbones import loaders as backbones
from performer_pkg.models.errors import BadInputError
from performer_pkg.models.posecrafter.personalise import (TrainSettings, apply_personalised, eval_loss, load_personalised, personalise,
                                              trainable_names)

TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
SIZE = 32


def _video(n=10, seed=0):
    """A small 'video': a bright square sliding over a textured background."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.rand(SIZE, SIZE, 3, generator=g) * 0.3
    out = bg.repeat(n, 1, 1, 1)
    for i in range(n):
        out[i, 8:20, 2 + i:14 + i] = torch.tensor([0.9, 0.6, 0.3])
    return out


def _hash(sd):
    h = hashlib.sha256()
    for k, v in sorted(sd.items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    return h.hexdigest()


def test_v_prediction_pipe_trains_on_its_own_target(ad):
    """A v-prediction, zero-terminal-SNR pipe (the demo model's schedule) personalises toward v, not ε: with the same
    seed the first step sees the same UNet output and noise, so its recorded loss differs from the ε pipe's only by the
    target (``training_target``, unit-tested in test_reference.py), and the v-loss falls."""
    import dataclasses

    vp = dataclasses.replace(ad, scheduler_config=dict(ad.scheduler_config, prediction_type="v_prediction",
                                                       rescale_betas_zero_snr=True, timestep_spacing="trailing"))
    frames, train = _video(), list(range(10))
    s = TrainSettings(steps=30, lr=1e-3, frames_per_step=4, target="posecrafter")
    loss0 = eval_loss(vp, frames, train, timesteps=(100, 500, 999))
    rv, tuned = personalise(vp, frames, s)
    re, _ = personalise(ad, frames, TrainSettings(steps=1, lr=1e-3, frames_per_step=4, target="posecrafter"))
    assert rv.meta["loss_curve"][0] != re.meta["loss_curve"][0]
    assert eval_loss(tuned, frames, train, timesteps=(100, 500, 999)) < loss0


def test_training_lowers_loss_and_changes_only_intended_tensors(ad, tmp_path):
    frames = _video()
    before_pipe = _hash(ad.unet.state_dict())
    train = list(range(10))
    loss0 = eval_loss(ad, frames, train)
    s = TrainSettings(steps=30, lr=1e-3, frames_per_step=4, target="posecrafter", gradient_checkpointing=True)
    path = str(tmp_path / "me.safetensors")
    result, tuned = personalise(ad, frames, s, save_path=path)
    assert eval_loss(tuned, frames, train) < loss0  # the training frames are fitted better
    assert _hash(ad.unet.state_dict()) == before_pipe  # the input pipe is untouched
    names = set(trainable_names(ad.unet, "posecrafter"))
    a, b = dict(ad.unet.named_parameters()), dict(tuned.unet.named_parameters())
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    assert changed and changed <= names  # nothing outside the target moved
    assert any("motion_modules" in n for n in changed) and any(".attn1.to_out." in n for n in changed)
    meta = load_personalised(path).meta
    assert meta["steps"] == 30 and len(meta["loss_curve"]) == 30 and meta["unet_params"] == sorted(names, key=list(a).index)
    # applying the saved weights to a clone reproduces the tuned UNet and leaves the original alone
    applied = apply_personalised(ad, load_personalised(path))
    assert _hash(applied.unet.state_dict()) == _hash(tuned.unet.state_dict())
    assert _hash(ad.unet.state_dict()) == before_pipe
    # temporal target trains the motion module only
    r2, t2 = personalise(ad, frames, TrainSettings(steps=2, lr=1e-3, frames_per_step=4, target="temporal"))
    b2 = dict(t2.unet.named_parameters())
    assert all("motion_modules" in n for n in a if not torch.equal(a[n], b2[n]))


class _Stop(Exception):
    pass


def test_interrupted_run_leaves_a_loadable_checkpoint_and_resumes(ad, tmp_path):
    frames = _video()
    path = str(tmp_path / "int.safetensors")

    def cb(step, total, loss):
        if step == 3:
            raise _Stop()

    with pytest.raises(_Stop):
        personalise(ad, frames, TrainSettings(steps=6, lr=1e-3, frames_per_step=4), callback=cb, save_path=path)
    ck = load_personalised(path)
    assert ck.meta["interrupted"] and ck.meta["steps"] == 3 and len(ck.meta["loss_curve"]) == 3
    apply_personalised(ad, ck)  # usable as it is
    res, _ = personalise(ad, frames, TrainSettings(steps=6, lr=1e-3, frames_per_step=4), save_path=path, resume=ck)
    assert res.meta["steps"] == 6 and len(res.meta["loss_curve"]) == 6 and not res.meta["interrupted"]


def test_bad_personalisation_inputs(ad, models_tree):
    frames = _video(6)
    with pytest.raises(BadInputError, match="6 training frames but frames_per_step is 8"):
        personalise(ad, frames, TrainSettings(steps=1))
    with pytest.raises(BadInputError, match="Poses are given for 5 frames but the video has 6"):
        personalise(ad, frames, TrainSettings(steps=1, frames_per_step=4), skeleton=torch.rand(5, SIZE, SIZE, 3))
    res, _ = personalise(ad, frames, TrainSettings(steps=1, frames_per_step=4))
    other = backbones.with_motion_module(backbones.load_sd15(models_tree[1]["sd15_dir"], device="cpu"), models_tree[1]["mm_file"])
    with torch.no_grad():
        next(p for n, p in other.unet.named_parameters() if ".attn1.to_out." in n).add_(0.01)  # a different base model
    with pytest.raises(BadInputError, match="another base model"):
        apply_personalised(other, res)
    plain = backbones.load_sd15(models_tree[1]["sd15_file"], device="cpu", tokenizer_dirs=TOK)
    with pytest.raises(BadInputError, match="another base model"):
        apply_personalised(plain, res)  # no motion module: the trained tensors do not exist


def test_posecrafter_pipeline_runs_each_step(ad, models_tree):
    import numpy as np

    from example_inputs import hand_made_pose
    from performer_pkg.models.pose.sequence import PoseSequence
    from performer_pkg.models.posecrafter.inference import PoseCrafterSettings, draw_edit_boxes, posecrafter

    cn = backbones.with_controlnet(ad, models_tree[1]["cn_file"])
    train = PoseSequence(np.concatenate([hand_made_pose(wave=0.2 * i).keypoints for i in range(10)]), 512, 512)
    target = PoseSequence(np.concatenate([hand_made_pose(dx=20 * i, wave=1.6).keypoints for i in range(3)]), 512, 512)
    frames = _video(10)
    lat, info = posecrafter(cn, frames, train, target, PoseCrafterSettings(steps=3, cfg=3.0))
    assert lat.shape == (1, 4, 3, SIZE // 2, SIZE // 2) and torch.isfinite(lat).all()
    assert info["reference_frame"] == 8 and info["inserted"]  # wave 1.6 is nearest to the targets' 1.6
    assert len(info["edits"]) == 3 and all(e["face"].startswith("edited") for e in info["edits"])
    assert all(set(b) == {"face", "left_hand", "right_hand"} for b in info["boxes"])
    off, info2 = posecrafter(cn, frames, train, target, PoseCrafterSettings(steps=3, cfg=3.0, select=False, invert=False,
                                                                           insert=False, edit=False))
    assert off.shape == lat.shape and info2["reference_frame"] == 0 and info2["edits"] == []
    vis = draw_edit_boxes(np.zeros((3, SIZE, SIZE, 3), np.uint8), info["boxes"], 2)
    assert vis.any()
    with pytest.raises(BadInputError, match="training images have 10 frames but training poses have 3"):
        posecrafter(cn, frames, target, target, PoseCrafterSettings(steps=1))


def test_command_line_entry(models_tree, tmp_path):
    import numpy as np
    from PIL import Image

    from performer_pkg.models.posecrafter.personalise import main

    d = tmp_path / "frames"
    d.mkdir()
    for i, fr in enumerate(_video(5).numpy()):
        Image.fromarray((fr * 255).astype(np.uint8)).save(d / f"{i:02d}.png")
    out = tmp_path / "cli.safetensors"
    main(["--backbone", models_tree[1]["sd15_file"], "--motion-module", models_tree[1]["mm_file"], "--tokenizer-dir", TOK[0],
          "--frames", str(d), "--size", str(SIZE), "--out", str(out), "--steps", "2", "--frames-per-step", "4"])
    assert load_personalised(str(out)).meta["steps"] == 2


def test_vae_decoder_finetuning_reconstructs_better(ad, tmp_path):
    import torch.nn.functional as F

    from performer_pkg.models.sampling.sampler import decode_latents, encode_video

    frames = _video(8)

    def rec_err(bb):
        with torch.no_grad():
            return F.l1_loss(decode_latents(bb, encode_video(bb, frames)), frames).item()

    before = rec_err(ad)
    vae_before = {k: v.clone() for k, v in ad.vae.state_dict().items()}
    path = str(tmp_path / "vae.safetensors")
    res, tuned = personalise(ad, frames, TrainSettings(steps=25, lr=1e-5, frames_per_step=4, train_vae_decoder=True, vae_lr=3e-3),
                             save_path=path)
    assert rec_err(tuned) < before
    assert all(torch.equal(v, ad.vae.state_dict()[k]) for k, v in vae_before.items())  # the pipe's VAE is untouched
    changed = [k for k, v in tuned.vae.state_dict().items() if not torch.equal(v, vae_before[k])]
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    applied = apply_personalised(ad, load_personalised(path))
    assert abs(rec_err(applied) - rec_err(tuned)) < 1e-6
