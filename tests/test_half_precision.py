"""Half precision on the CPU (issue 18): the tiny AnimateDiff pipe loaded in bf16 samples, personalises and fine-tunes
its VAE decoder.  Personalisation keeps fp32 master weights of the trained tensors (AdamW in fp32, forward under bf16
autocast): at ControlVideo's learning rate (3e-5) each step's update is far below bf16's spacing at the weights' size
(≈ 2⁻⁸·|w|), so without master weights most of the stored weights would not move."""
import os

import pytest
import torch

import tiny_models as tm
from performer_pkg.models.backbones import loaders as backbones
from performer_pkg.models.posecrafter.personalise import TrainSettings, eval_loss, personalise, trainable_names
from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_video, sample_video

TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
SIZE = 32


@pytest.fixture(scope="module")
def ad16(models_tree):
    bb = backbones.load_sd15(models_tree[1]["sd15_file"], device="cpu", dtype=torch.bfloat16, tokenizer_dirs=TOK)
    return backbones.with_motion_module(bb, models_tree[1]["mm_file"])


def _video(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = (torch.rand(SIZE, SIZE, 3, generator=g) * 0.3).repeat(n, 1, 1, 1)
    for i in range(n):
        out[i, 8:20, 2 + i:14 + i] = torch.tensor([0.9, 0.6, 0.3])
    return out


def test_bf16_sampling_follows_fp32(ad, ad16):
    assert ad16.dtype == torch.bfloat16 and next(ad16.unet.parameters()).dtype == torch.bfloat16
    s = VideoSettings(frames=4, width=SIZE, height=SIZE, steps=6, cfg=3.0, seed=1, prompt="a person", window=16, stride=8)
    lo, hi = sample_video(ad16, s), sample_video(ad, s)
    assert lo.dtype == torch.bfloat16 and torch.isfinite(lo.float()).all()
    # bf16 keeps ~3 significant digits: the same video within a few percent of its spread, not another one
    assert (lo.float() - hi).abs().mean() < 0.05 * hi.std()


def test_bf16_personalisation_learns_and_moves_weights_past_bf16_rounding(ad16):
    frames, train = _video(10), list(range(10))
    names = trainable_names(ad16.unet, "posecrafter")
    before = {n: p.detach().clone() for n, p in ad16.unet.named_parameters() if n in names}
    loss0 = eval_loss(ad16, frames, train, timesteps=(100, 500, 999))
    res, tuned = personalise(ad16, frames, TrainSettings(steps=30, lr=1e-3, frames_per_step=4, target="posecrafter"))
    assert eval_loss(tuned, frames, train, timesteps=(100, 500, 999)) < loss0  # the loss falls …
    assert all(p.dtype == torch.bfloat16 for p in tuned.unet.parameters())  # … and the tuned UNet samples in bf16

    small, tuned_small = personalise(ad16, frames, TrainSettings(steps=30, frames_per_step=4, target="posecrafter"))  # lr 3e-5
    after = dict(tuned_small.unet.named_parameters())
    moved = torch.cat([(after[n].detach() != before[n]).flatten() for n in names]).float().mean()
    assert moved > 0.5, f"only {moved:.1%} of the trained bf16 weights moved"
    assert all(torch.equal(p, before[n]) for n, p in ad16.unet.named_parameters() if n in names)  # the pipe is untouched
    assert small.tensors["unet." + names[0]].dtype == torch.bfloat16


def test_bf16_vae_decoder_finetuning_reconstructs_better(ad16):
    import torch.nn.functional as F

    frames = _video(8)

    def rec_err(bb):
        with torch.no_grad():
            return F.l1_loss(decode_latents(bb, encode_video(bb, frames)).float(), frames).item()

    before = rec_err(ad16)
    _, tuned = personalise(ad16, frames, TrainSettings(steps=25, lr=1e-5, frames_per_step=4, train_vae_decoder=True,
                                                       vae_lr=3e-3))
    assert all(p.dtype == torch.bfloat16 for p in tuned.vae.parameters())
    assert rec_err(tuned) < before
