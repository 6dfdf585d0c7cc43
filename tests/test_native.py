"""Apply Causal Reference on ComfyUI's own MODEL (nodes/native.py), in-process with core's classes.

The model is core's ``comfy.model_base.BaseModel`` (SD1.5 config class, ε-prediction, core's ``UNetModel``) at the
tiny test width, wrapped in core's ``ModelPatcher`` (``tiny_models.core_sd15_patcher``), with the same UNet weights as
the tiny single file the pack's pipe loads (both from ``tiny_models.comfy_sd15_unet()``).  A test-only constructor,
because core's checkpoint detection refuses tiny widths (research/native.md); the classes are the real ones.  Sampling is core's: ``comfy.sample.
sample_custom`` with core's DDIM sampler (Euler on σ, which is DDIM with η = 0).

How the two samplers are made comparable (the parity test):
* timesteps: diffusers' DDIM at 20 steps (leading spacing, offset 1) visits t = 951, 901, …, 1 and ends at ᾱ₀
  (``set_alpha_to_one=False``); core gets the sigmas of exactly those timesteps followed by σ(t = 0);
* variables: diffusers' latent is √ᾱ·x where x is core's (variance-exploding) latent, so core starts from the same
  noise times √(1+σ²)/σ (core scales its noise by σ), and the pipe's result equals √ᾱ₀ · core's result;
* latent scale: core returns latents divided by SD1.5's 0.18215; the reference latent goes in divided by it too;
* text: both use the pipe's CLIP embeddings of the same prompts (core gets them as CONDITIONING).
"""
import math
import os

import pytest
import torch

import tiny_models as tm

tm.ensure_comfy_importable()

TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
SCALE = 0.18215  # core's SD1.5 latent format
FRAMES, STEPS, SIZE = 3, 20, 32


@pytest.fixture(scope="module")
def setup(models_tree):
    from performer_pkg.models import backbones
    from performer_pkg.models.sampling import encode_prompts, encode_reference

    bb = backbones.load_sd15(models_tree[1]["sd15_file"], device="cpu", tokenizer_dirs=TOK)
    assert bb.vae_scale_factor == 2
    g = torch.Generator().manual_seed(5)
    ref_img = torch.rand((1, SIZE, SIZE, 3), generator=g)
    ref = encode_reference(bb, ref_img, noise_aug=0.0, face="off")
    with torch.no_grad():
        neg, pos = encode_prompts(bb, ["", "a person dancing"])
    return {"bb": bb, "ref": ref, "pos": [[pos[None], {}]], "neg": [[neg[None], {}]], "model": tm.core_sd15_patcher()}


def ddim_sigmas(model, steps=STEPS):
    ms = model.get_model_object("model_sampling")
    ts = list(range(1 + (steps - 1) * (1000 // steps), 0, -(1000 // steps)))  # 951, 901, …, 1
    return torch.cat([ms.sigmas[ts], ms.sigmas[:1]]).float(), ms


def core_sample(model, setup, noise_d, cfg=1.0, callback=None, steps=STEPS):
    """Core sampling from the pipe's initial noise (1, C, F, h, w); returns latents in the pipe's variables."""
    import comfy.sample
    import comfy.samplers

    sigmas, ms = ddim_sigmas(model, steps)
    s0 = float(sigmas[0])
    noise = noise_d[0].permute(1, 0, 2, 3) * math.sqrt(1 + s0 ** 2) / s0
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("ddim"), sigmas, setup["pos"],
                                     setup["neg"], torch.zeros_like(noise), callback=callback, disable_pbar=True, seed=0)
    a0 = 1.0 / (1.0 + float(ms.sigmas[0]) ** 2)  # ᾱ₀
    return (out * SCALE * math.sqrt(a0)).permute(1, 0, 2, 3)[None]


def pipe_sample(setup, cfg=1.0, reference=True, seed=3):
    from performer_pkg.models.sampling import VideoSettings, sample_video

    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=cfg, seed=seed, prompt="a person dancing",
                      window=16, stride=8, scheduler="ddim")
    return sample_video(setup["bb"], s, setup["ref"], use_reference_attention=reference)


def pipe_noise(seed=3, f=2):
    """The pipe's initial noise (sample_video draws it the same way); f: the tiny VAE's downscale."""
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, 4, FRAMES, SIZE // f, SIZE // f), generator=g, dtype=torch.float32)


def patched(setup, strength=1.0, uncond="auto", **kw):
    from performer_pkg.nodes.native import apply_causal_reference

    return apply_causal_reference(setup["model"], setup["ref"].latent / SCALE, strength, uncond, **kw)


def options_snapshot(model):
    return repr(model.model_options), {k: {kk: len(v) for kk, v in d.items()} for k, d in model.wrappers.items()}


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_parity_with_the_pipe_reference_on_and_off(setup, cfg):
    noise = pipe_noise()
    plain_core = core_sample(setup["model"], setup, noise, cfg)
    plain_pipe = pipe_sample(setup, cfg, reference=False)
    assert (plain_core - plain_pipe).abs().max() < 1e-4  # latents of magnitude ~10: float32 kernel differences only
    m, patch = patched(setup)
    ref_core = core_sample(m, setup, noise, cfg)
    ref_pipe = pipe_sample(setup, cfg, reference=True)
    assert (ref_core - ref_pipe).abs().max() < 1e-4
    # the reference's effect on the video agrees between the two paths (a native patch that read nothing, or read
    # the wrong rows, would fail here: the random tiny model's effect is small, so it is compared on its own)
    d_core, d_pipe = ref_core - plain_core, ref_pipe - plain_pipe
    assert d_pipe.abs().max() > 5e-4
    assert (d_core - d_pipe).abs().max() < 0.1 * d_pipe.abs().max()
    assert patch.writes == 1 and patch.runs == 1 and patch.reads > 0


def test_strength_zero_is_exactly_the_unpatched_model_and_the_original_is_untouched(setup):
    noise = pipe_noise(7)
    model = setup["model"]
    before_opts = options_snapshot(model)
    base = core_sample(model, setup, noise, 3.0, steps=4)
    m0, p0 = patched(setup, strength=0.0)
    assert torch.equal(core_sample(m0, setup, noise, 3.0, steps=4), base)
    assert p0.writes == 0 and p0.reads == 0
    m1, _ = patched(setup, strength=1.0)
    with_ref = core_sample(m1, setup, noise, 3.0, steps=4)
    assert not torch.equal(with_ref, base)
    assert torch.equal(core_sample(model, setup, noise, 3.0, steps=4), base)  # the original after the patched ran
    assert options_snapshot(model) == before_opts
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_reference_pass_runs_once_per_run_also_under_core_context_windows(setup):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    m, patch = patched(setup)
    windowed = ContextWindowsManualNode.execute(m, context_length=2, context_overlap=1, context_schedule="standard_static",
                                                context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0)
    windowed = windowed[0] if isinstance(windowed, tuple) else windowed.result[0]
    calls = []
    orig = patch.apply_model

    def counting(executor, x, *a, **k):
        calls.append(x.shape[0])
        return orig(executor, x, *a, **k)

    windowed.wrappers["apply_model"]["performer_causal_reference"] = [counting]
    # Core 0.3.75's context handler finds the step by comparing the per-frame timestep tensor with the schedule's
    # sigmas (torch.isclose), which only broadcasts when the frame count equals the sigma count: frames-in-batch
    # models need steps = frames - 1 there, so this test samples 3 frames in 2 steps.
    steps = FRAMES - 1
    core_sample(windowed, setup, pipe_noise(), 1.0, steps=steps)
    assert calls == [2] * (2 * steps), calls  # two windows of two frames per step …
    assert patch.writes == 1 and patch.runs == 1  # … and one reference pass for the whole run
    core_sample(windowed, setup, pipe_noise(), 1.0, steps=steps)
    assert patch.writes == 2 and patch.runs == 2  # the next run writes its own
    assert patch.run is None and not patch.last_run.cache  # released at the end of the run


@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_state_released_and_original_intact_after_error_and_interrupt(setup, how):
    import comfy.model_management

    model = setup["model"]
    before = options_snapshot(model)
    noise = pipe_noise(9)
    base = core_sample(model, setup, noise, 1.0, steps=4)
    m, patch = patched(setup)

    def stop(step, *a, **k):
        if step == 1:
            raise comfy.model_management.InterruptProcessingException() if how == "interrupt" else RuntimeError("boom")

    with pytest.raises((comfy.model_management.InterruptProcessingException, RuntimeError)):
        core_sample(m, setup, noise, 1.0, callback=stop, steps=4)
    assert patch.writes == 1 and patch.run is None and not patch.last_run.cache
    assert options_snapshot(model) == before
    assert torch.equal(core_sample(model, setup, noise, 1.0, steps=4), base)
    # the patched clone still works for the next run
    core_sample(m, setup, noise, 1.0, steps=2)
    assert patch.writes == 2


def test_bad_inputs_are_refused_clearly(setup):
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import apply_causal_reference

    lat = setup["ref"].latent / SCALE
    with pytest.raises(BadInputError, match="strength"):
        apply_causal_reference(setup["model"], lat, -1.0)
    with pytest.raises(BadInputError, match="start_percent"):
        apply_causal_reference(setup["model"], lat, 1.0, start_percent=0.8, end_percent=0.2)
    with pytest.raises(BadInputError, match="one image"):
        apply_causal_reference(setup["model"], torch.cat([lat, lat]), 1.0)
    with pytest.raises(BadInputError, match="uncond"):
        apply_causal_reference(setup["model"], lat, 1.0, uncond="maybe")
    m, _ = apply_causal_reference(setup["model"], torch.zeros(1, 4, 2, 2), 1.0)  # wrong size: error at sampling
    with pytest.raises(ValueError, match="resize the reference"):
        core_sample(m, setup, pipe_noise(), 1.0, steps=2)
