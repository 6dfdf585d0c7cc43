"""The pack's own sampling pipe against diffusers' pipelines, on the same tiny weights.

With causal reference attention, pose guidance and identity off, ``sample_video`` must be AnimateDiff as diffusers'
``AnimateDiffPipeline`` samples it (with the noise schedule AnimateDiff's motion modules were trained with) and SVD as
``StableVideoDiffusionPipeline`` samples it.  Both sides run on the CPU in fp32 from the same seeded initial noise,
passed to diffusers as ``latents=``; both return latents (``output_type="latent"``), compared before decoding.

The models are the tests' tiny ones (``tests/tiny_models.py``), written to single files in ComfyUI's layouts and
loaded by the pack's loaders, as users' files are; diffusers' pipelines get the very modules the pack loaded (its 2-D
UNet and MotionAdapter for AnimateDiff, which diffusers joins into its own UNetMotionModel).
"""
import os

import numpy as np
import pytest
import torch

import tiny_models as tm
from performer_pkg.models.backbones import loaders as backbones
from performer_pkg.models.backbones.ldm_layout import reference_config
from performer_pkg.models.sampling.sampler import VideoSettings, encode_reference, make_scheduler, sample_video

torch.set_num_threads(1)
TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
SIZE, FRAMES, STEPS, SEED = 32, 6, 6, 5

# AnimateDiff's own noise-scheduler settings (guoyww/AnimateDiff configs/inference/inference-v3.yaml; the same betas in
# inference-v1/-v2.yaml and configs/training/v1/training.yaml), written out here rather than taken from the pack.
ANIMATEDIFF_NOISE_SCHEDULER_KWARGS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1,
                                          clip_sample=False)

# Tolerance.  Both sides make the same UNet calls on the same batches ([uncond, cond] × frames) in the same order
# and the same scheduler steps, so only fp32 rounding may differ (the text encoder runs the two prompts as one batch
# in the pack and one at a time in diffusers; SVD's latents are laid out (B, C, F, h, w) in the pack and
# (B, F, C, h, w) in diffusers).  Measured on the 2-core CPU, one thread: max abs difference exactly 0 for AnimateDiff
# (DDIM and Euler; latents of std ≈ 9.8) and for SVD (std ≈ 0.43).  1e-4 leaves room for other BLAS builds and thread
# counts and stays far below what a real mismatch gives: SD1.5's scaled_linear betas instead of AnimateDiff's linear
# ones (the pack's schedule before issue 18) differ by 14.6, checked below.
ATOL = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    paths = {"sd15": str(d / "tiny_sd15.safetensors"), "mm": str(d / "tiny_mm_sd_v15_v2.safetensors"),
             "svd": str(d / "tiny_svd.safetensors")}
    tm._save(tm.sd15_single_file_state(), paths["sd15"])
    tm._save(tm.motion_module_original_state(), paths["mm"])
    tm._save(tm.svd_single_file_state(), paths["svd"])
    return paths


def _noise(channels: int) -> torch.Tensor:
    """The initial noise ``sample_video`` draws for SEED (documented: a CPU generator seeded with the seed, one
    ``randn`` of shape (1, C, F, h, w)), drawn here independently to hand to diffusers."""
    g = torch.Generator("cpu").manual_seed(SEED)
    return torch.randn((1, channels, FRAMES, SIZE // 2, SIZE // 2), generator=g, dtype=torch.float32)


@pytest.fixture(scope="module")
def animatediff(files):
    base = backbones.load_sd15(files["sd15"], device="cpu", tokenizer_dirs=TOK)
    return base, backbones.with_motion_module(base, files["mm"])


def _animatediff_pipe(base, bb, scheduler):
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                               motion_adapter=bb.motion_adapter, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler")])
def test_animatediff_sampling_equals_diffusers_animatediff_pipeline(animatediff, name, cls):
    """AnimateDiff (SD1.5 single file + mm_sd_v15_v2-layout motion module) with ``sample_video`` vs
    ``AnimateDiffPipeline``.  Made comparable: the same UNet weights (diffusers builds its UNetMotionModel from the
    pack's 2-D UNet and MotionAdapter), VAE, text encoder and tokenizer; the same scheduler class, configured
    independently for diffusers as AnimateDiff configures it (SD1.5's scheduler config with AnimateDiff's
    ``noise_scheduler_kwargs``: linear betas 0.00085–0.012, steps_offset 1, no clipping); the same prompt and
    negative prompt (each side encodes them with the same CLIP text model), guidance 7.5, frames, size, steps; the
    same initial noise (``latents=``, scaled by ``init_noise_sigma`` on both sides).  The pack's schedule must be
    the linear one (asserted first), and the same run on SD1.5's scaled_linear betas must be far off."""
    import diffusers

    base, bb = animatediff
    # the schedule the pack picks for an AnimateDiff pipe: AnimateDiff's linear betas, not SD1.5's scaled_linear
    sched = make_scheduler(bb, name)
    assert type(sched).__name__ == cls
    assert sched.config.beta_schedule == "linear"
    assert (sched.config.beta_start, sched.config.beta_end) == (0.00085, 0.012)
    assert base.scheduler_config["beta_schedule"] == "scaled_linear"  # the checkpoint alone keeps SD1.5's

    ref_sched = getattr(diffusers, cls).from_config(reference_config("sd15_scheduler.json"), **ANIMATEDIFF_NOISE_SCHEDULER_KWARGS)
    assert torch.equal(sched.alphas_cumprod, ref_sched.alphas_cumprod)
    pipe = _animatediff_pipe(base, bb, ref_sched)
    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=7.5, seed=SEED, prompt="a person dancing",
                      negative="blurry", scheduler=name, window=FRAMES, stride=FRAMES)
    ours = sample_video(bb, s, use_reference_attention=False)
    theirs = pipe(prompt="a person dancing", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, guidance_scale=7.5, latents=_noise(4), output_type="latent").frames
    assert ours.shape == theirs.shape == (1, 4, FRAMES, SIZE // 2, SIZE // 2)
    diff = (ours - theirs).abs().max().item()
    print(f"AnimateDiff {name}: max |pack - diffusers| = {diff:.3g} (latent std {theirs.std().item():.3g})")
    assert diff <= ATOL, diff

    # the test has teeth: SD1.5's scaled_linear betas (the pack's schedule before issue 18) give another video
    old = sample_video(bb, VideoSettings(**{**s.__dict__, "beta_schedule": "scaled_linear"}), use_reference_attention=False)
    old_diff = (old - theirs).abs().max().item()
    print(f"AnimateDiff {name} on scaled_linear betas: max |pack - diffusers| = {old_diff:.3g}")
    assert old_diff > 100 * ATOL, old_diff


def test_animatediff_schedule_follows_the_weights(animatediff, files, tmp_path):
    """Without a motion module the checkpoint's own schedule; with one, the one the motion module states it was
    trained with (the pack's demo motion module: scaled_linear), else AnimateDiff's linear betas; the
    ``beta_schedule`` setting overrides it."""
    base, bb = animatediff
    assert make_scheduler(base, "ddim").config.beta_schedule == "scaled_linear"
    assert make_scheduler(bb, "ddim", "scaled_linear").config.beta_schedule == "scaled_linear"
    assert make_scheduler(base, "ddim", "linear").config.beta_schedule == "linear"
    assert bb.source["beta_schedule"] == "linear"
    folder = tmp_path / "demo_like_adapter"
    bb.motion_adapter.save_pretrained(str(folder))
    assert backbones.with_motion_module(base, str(folder)).scheduler_config["beta_schedule"] == "linear"
    (folder / "scheduler_config.json").write_text('{"beta_schedule": "scaled_linear"}')
    demo_like = backbones.with_motion_module(base, str(folder))
    assert demo_like.scheduler_config["beta_schedule"] == "scaled_linear"
    # the demo's motion module: what scripts/train_demo_models.py trained it with
    assert backbones.motion_module_betas(os.path.join(tm.DEMO_MODELS, "motion_adapter"))["beta_schedule"] == "scaled_linear"


def test_svd_sampling_equals_diffusers_svd_pipeline(files):
    """SVD (sgm single file) with ``sample_video`` vs ``StableVideoDiffusionPipeline``.  Made comparable: the same
    UNet, VAE and CLIP image encoder; the same EulerDiscreteScheduler config (the model's EDM one: Karras sigmas
    0.002–700, v-prediction, continuous timesteps); the same reference image (given to diffusers as a PIL image of the
    video size, so its resize is a no-op: checked) and noise augmentation 0.02 with the same seeded noise (diffusers
    draws it first from ``generator``, the pack from its encode seed); fps 7 (both condition on fps − 1), motion
    bucket 127; the per-frame guidance ramp min_guidance_scale 1.0 → max_guidance_scale 3.0 (``min_cfg`` → ``cfg``);
    the same initial noise (``latents=``, laid out (B, F, C, h, w) for diffusers).  One convention differs and is
    made equal here: the CLIP image embedding.  diffusers (like SVD's sgm code) squashes the image to 224×224 with an
    antialiased resize; the pack's pipe uses the CLIP image processor (shortest side to 224, centre crop, as ComfyUI's
    clip_vision does), so the reference carries diffusers' embedding for this comparison."""
    from PIL import Image
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    bb = backbones.load_svd(files["svd"], device="cpu")
    sched = make_scheduler(bb, "ddim")
    assert type(sched).__name__ == "EulerDiscreteScheduler"
    assert sched.config.prediction_type == "v_prediction" and sched.config.use_karras_sigmas
    assert (sched.config.sigma_min, sched.config.sigma_max) == (0.002, 700.0)
    pipe = StableVideoDiffusionPipeline(vae=bb.vae, image_encoder=bb.image_encoder, unet=bb.unet,
                                        scheduler=EulerDiscreteScheduler.from_config(bb.scheduler_config),
                                        feature_extractor=bb.feature_extractor)
    pipe.set_progress_bar_config(disable=True)

    rgb = torch.randint(0, 256, (1, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    image = rgb.float() / 255
    pil = Image.fromarray(rgb[0].numpy())
    pre = pipe.video_processor.preprocess(pil, height=SIZE, width=SIZE)
    assert torch.allclose(pre, image.permute(0, 3, 1, 2) * 2 - 1, atol=1e-6)  # no resize on the diffusers side
    ref = encode_reference(bb, image, noise_aug=0.02, seed=SEED)
    with torch.no_grad():
        theirs_clip = pipe._encode_image(pil, "cpu", 1, False)[:, 0]
    print(f"SVD CLIP embedding, pack's processor vs diffusers': max diff {(ref.clip_embeds - theirs_clip).abs().max().item():.3g}")
    ref.clip_embeds = theirs_clip.float()

    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=3.0, min_cfg=1.0, seed=SEED, fps=7,
                      motion_bucket_id=127, window=FRAMES, stride=FRAMES)
    ours = sample_video(bb, s, reference=ref, use_reference_attention=False)
    theirs = pipe(pil, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=STEPS, min_guidance_scale=1.0,
                  max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
                  generator=torch.Generator("cpu").manual_seed(SEED), latents=_noise(4).permute(0, 2, 1, 3, 4),
                  output_type="latent").frames
    theirs = theirs.permute(0, 2, 1, 3, 4)
    assert ours.shape == theirs.shape == (1, 4, FRAMES, SIZE // 2, SIZE // 2)
    diff = (ours - theirs).abs().max().item()
    print(f"SVD: max |pack - diffusers| = {diff:.3g} (latent std {theirs.std().item():.3g})")
    assert diff <= ATOL, diff
    assert np.isfinite(diff)


def test_scheduler_config_values_win_over_use_default_values(tmp_path):
    """A scheduler_config.json written from a live diffusers config keeps its "_use_default_values" list, and
    ``from_config`` replaces every key on it with the library default: a v-prediction, zero-SNR folder (what
    scripts/train_demo_models.py wrote before it dropped that list) would sample as ε with ordinary betas.  The loader
    honours the values the file states (the training script no longer writes the list and checks its scheduler took
    them)."""
    import json

    from diffusers import DDIMScheduler

    src = os.path.join(tm.DEMO_MODELS, "sd15")
    folder = tmp_path / "sd15_v"
    folder.mkdir()
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        os.symlink(os.path.join(src, sub), folder / sub)
    cfg = dict(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config)
    assert {"prediction_type", "rescale_betas_zero_snr", "timestep_spacing"} <= set(cfg["_use_default_values"])
    cfg.update(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    assert DDIMScheduler.from_config(cfg).config.prediction_type == "epsilon"  # diffusers' behaviour the loader guards
    bb = backbones.load_backbone(str(folder), tokenizer_dirs=TOK)
    for name in ("ddim", "euler"):
        c = make_scheduler(bb, name).config
        assert (c.prediction_type, c.rescale_betas_zero_snr, c.timestep_spacing) == ("v_prediction", True, "trailing")
