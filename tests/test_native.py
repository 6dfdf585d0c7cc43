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
import json
import math
import os

import numpy as np
import pytest
import torch

import tiny_models as tm

tm.ensure_comfy_importable()

TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
SCALE = 0.18215  # core's SD1.5 latent format
FRAMES, STEPS, SIZE = 3, 20, 32


@pytest.fixture(scope="module")
def setup(models_tree):
    from performer_pkg.models.backbones import loaders as backbones
    from performer_pkg.models.sampling.sampler import encode_prompts, encode_reference

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
    from performer_pkg.models.sampling.sampler import VideoSettings, sample_video

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
    twice, _ = apply_causal_reference(setup["model"], lat, 1.0)
    with pytest.raises(BadInputError, match="already has a self-attention replacement.*CausalReferencePatch"):
        apply_causal_reference(twice, lat, 1.0)  # would silently replace the first patch
    m, _ = apply_causal_reference(setup["model"], torch.zeros(1, 4, 2, 2), 1.0)  # wrong size: error at sampling
    with pytest.raises(ValueError, match="resize the reference"):
        core_sample(m, setup, pipe_noise(), 1.0, steps=2)


# ----------------------------------------------------------------------------- Apply Pose Guidance


def _maps(seed, n=FRAMES):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, SIZE, SIZE, 3), generator=g)  # IMAGE batches (frames, H, W, 3), the video's size


def posed(model, pc, strength=1.0, **kw):
    from performer_pkg.nodes.native import apply_pose_guidance

    return apply_pose_guidance(model, pc, _maps(21), _maps(22), strength=strength, **kw)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_pose_guidance_parity_with_the_pipe(setup, cfg):
    """Apply Causal Reference + Apply Pose Guidance on core's MODEL against the pipe with the same pose controller,
    skeleton maps and SMPL-X renders (both CFG halves get the features, as in the pipe)."""
    from performer_pkg.models.sampling.sampler import VideoSettings, sample_video

    pc = tm.tiny_pose_controller(downsample=2)
    bb = setup["bb"].with_parts(pose_controller=pc)
    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=cfg, seed=3, prompt="a person dancing",
                      window=16, stride=8, scheduler="ddim")
    pipe = sample_video(bb, s, setup["ref"], skeleton=_maps(21), smplx=_maps(22))
    m, _ = patched(setup)
    m, patch = posed(m, pc)
    core = core_sample(m, setup, pipe_noise(), cfg)
    assert (core - pipe).abs().max() < 1e-4
    unposed = pipe_sample(setup, cfg, reference=True)
    assert (pipe - unposed).abs().max() > 1e-3  # the poses did something, and the same thing on both paths
    assert patch.runs == 1 and patch.run is None and patch.last_calls == [[0, 1, 2]] * STEPS


def test_reference_pose_and_render_parity_with_the_pipe(setup):
    """SCD's pose injection on both paths: the reference's own skeleton and SMPL-X render through the pose controller
    in the reference pass (Apply Pose Guidance's reference_pose / reference_smplx against Encode Reference's pose /
    smplx), as the demo model is trained; each map changes the video."""
    import dataclasses

    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.sampling.sampler import VideoSettings, encode_reference, sample_video
    from performer_pkg.nodes.native import apply_pose_guidance

    pc = tm.tiny_pose_controller(downsample=2)
    bb = setup["bb"].with_parts(pose_controller=pc)
    rp, rs = _maps(23, n=1), _maps(24, n=1)
    ref = encode_reference(bb, setup["ref"].image, noise_aug=0.0, face="off", pose=rp, pose_render=rs)
    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=3.0, seed=3, prompt="a person dancing",
                      window=16, stride=8, scheduler="ddim")
    pipe = sample_video(bb, s, ref, skeleton=_maps(21), smplx=_maps(22))
    m, _ = patched(setup)
    m, patch = posed(m, pc, reference_pose=rp, reference_smplx=rs)
    core = core_sample(m, setup, pipe_noise(), 3.0)
    assert (core - pipe).abs().max() < 1e-4
    no_render = sample_video(bb, s, dataclasses.replace(ref, pose_render=None), skeleton=_maps(21), smplx=_maps(22))
    assert (pipe - no_render).abs().max() > 1e-4  # the render did something, and the same thing on both paths
    only_sk = tm.tiny_pose_controller(downsample=2, kinds=("skeleton",))
    with pytest.raises(BadInputError, match="reference_smplx is an SMPL-X render, but this pose controller has no smplx"):
        apply_pose_guidance(setup["model"], only_sk, _maps(21), reference_smplx=rs)


def test_pose_guidance_strength_zero_exact_original_untouched_and_windows_pick_their_frames(setup):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    pc = tm.tiny_pose_controller(downsample=2)
    model = setup["model"]
    before = options_snapshot(model)
    noise = pipe_noise(7)
    base = core_sample(model, setup, noise, 3.0, steps=4)
    m0, _ = posed(model, pc, strength=0.0)
    assert torch.equal(core_sample(m0, setup, noise, 3.0, steps=4), base)
    m1, _ = posed(model, pc)
    assert not torch.equal(core_sample(m1, setup, noise, 3.0, steps=4), base)
    assert torch.equal(core_sample(model, setup, noise, 3.0, steps=4), base) and options_snapshot(model) == before
    # under core context windows each call gets the features of the frames its window holds
    windowed = ContextWindowsManualNode.execute(m1, context_length=2, context_overlap=1, context_schedule="standard_static",
                                                context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0)
    windowed = windowed[0] if isinstance(windowed, tuple) else windowed.result[0]
    patch = windowed.wrappers["diffusion_model"]["performer_pose_guidance"][0].__self__
    core_sample(windowed, setup, pipe_noise(), 1.0, steps=FRAMES - 1)  # core 0.3.75: steps = frames - 1 (see above)
    assert patch.last_calls == [[0, 1], [1, 2]] * (FRAMES - 1)


def test_pose_guidance_bad_inputs_are_refused_clearly(setup):
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.guidance.pose_controller import PoseController
    from performer_pkg.nodes.native import apply_pose_guidance

    pc = tm.tiny_pose_controller(downsample=2)
    model = setup["model"]
    with pytest.raises(BadInputError, match="neither is connected"):
        apply_pose_guidance(model, pc)
    only_sk = PoseController(latent_channels=4, downsample=2, channels=(8, 16), heads=2, kinds=("skeleton",))
    with pytest.raises(BadInputError, match="no encoder for smplx.*would be ignored"):
        apply_pose_guidance(model, only_sk, _maps(1), _maps(2))
    with pytest.raises(BadInputError, match="same driving video"):
        apply_pose_guidance(model, pc, _maps(1), _maps(2, n=FRAMES + 1))
    with pytest.raises(BadInputError, match="8-channel features"):
        apply_pose_guidance(model, PoseController(latent_channels=8, downsample=2, channels=(8, 16), heads=2), _maps(1))
    twice, _ = apply_pose_guidance(model, pc, _maps(1))
    with pytest.raises(BadInputError, match="already has Apply Pose Guidance"):
        apply_pose_guidance(twice, pc, _maps(1))
    short, _ = apply_pose_guidance(model, pc, _maps(1, n=FRAMES - 1))  # fewer maps than frames: error at sampling
    with pytest.raises(BadInputError, match="skeleton maps has 2 frames but 3 frames are sampled"):
        core_sample(short, setup, pipe_noise(), 1.0, steps=2)


# ----------------------------------------------------------------------------- Apply Identity


def _identity_inputs(models_tree, setup):
    import dataclasses

    from performer_pkg.models.attention.identity import load_identity_adapter

    path = models_tree[1]["id_sd15"]
    ad = load_identity_adapter(path)
    g = torch.Generator().manual_seed(31)
    clip = torch.randn(1, ad.config["clip_dim"], generator=g)
    face = torch.nn.functional.normalize(torch.randn(1, ad.config["face_dim"], generator=g), dim=-1)
    ref = dataclasses.replace(setup["ref"], clip_embeds=clip, face_embeds=face)
    return path, clip, face, ref


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_identity_parity_with_the_pipe(models_tree, setup, cfg):
    """Apply Causal Reference + Apply Identity on core's MODEL against the pipe with the same identity adapter and the
    same CLIP-image and face embeddings (the pipe appends the tokens to the context; the native patch projects them
    once and adds the decoupled attention in core's attn2)."""
    from performer_pkg.models.attention.identity import load_identity_adapter
    from performer_pkg.models.backbones import loaders as backbones
    from performer_pkg.models.sampling.sampler import VideoSettings, sample_video
    from performer_pkg.nodes.native import apply_identity, cross_attention_keys

    path, clip, face, ref = _identity_inputs(models_tree, setup)
    keys = cross_attention_keys(setup["model"].model.diffusion_model)
    assert sorted(keys.values()) == sorted(load_identity_adapter(path).config["layers"])  # the layout map is complete
    bb = backbones.with_identity_adapter(setup["bb"], path)
    s = VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=cfg, seed=3, prompt="a person dancing",
                      window=16, stride=8, scheduler="ddim")
    pipe = sample_video(bb, s, ref)
    m, _ = patched(setup)
    m, patch = apply_identity(m, load_identity_adapter(path), clip, face)
    core = core_sample(m, setup, pipe_noise(), cfg)
    assert (core - pipe).abs().max() < 1e-4
    assert (pipe - pipe_sample(setup, cfg, reference=True)).abs().max() > 1e-3  # identity did something
    assert patch.reads > 0


def test_identity_zero_scales_exact_original_untouched_and_bad_inputs(models_tree, setup):
    from performer_pkg.models.attention.identity import load_identity_adapter
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import apply_identity

    path, clip, face, _ = _identity_inputs(models_tree, setup)
    model = setup["model"]
    before = options_snapshot(model)
    noise = pipe_noise(7)
    base = core_sample(model, setup, noise, 3.0, steps=4)
    m0, _ = apply_identity(model, load_identity_adapter(path), clip, face, image_scale=0.0, face_scale=0.0)
    assert torch.equal(core_sample(m0, setup, noise, 3.0, steps=4), base)
    m1, _ = apply_identity(model, load_identity_adapter(path), clip, face)
    assert not torch.equal(core_sample(m1, setup, noise, 3.0, steps=4), base)
    assert torch.equal(core_sample(model, setup, noise, 3.0, steps=4), base) and options_snapshot(model) == before
    with pytest.raises(BadInputError, match="no clip_vision_output"):
        apply_identity(model, load_identity_adapter(path), None, face)
    with pytest.raises(BadInputError, match="already has cross-attention replacements"):
        apply_identity(m1, load_identity_adapter(path), clip, face)
    with pytest.raises(BadInputError, match="made for another UNet"):
        apply_identity(tm.core_svd_patcher(), load_identity_adapter(path), clip, face)
    with pytest.raises(BadInputError, match="made for another UNet"):
        apply_identity(tm.core_sd15_patcher(width_mult=2), load_identity_adapter(path), clip, face)


# ----------------------------------------------------------------------------- in the test host (core loaders, KSampler)


def _native_api():
    with open(os.path.join(tm.REPO, "tests", "workflows", "performer_native_sd15_reference.api.json")) as fh:
        return json.load(fh)


def _frames(host, res):
    import io

    import numpy as np
    from PIL import Image

    from host import output_files

    return [np.asarray(Image.open(io.BytesIO(host.view(f)))) for f in output_files(res)]


def test_free_releases_everything_the_native_patches_hold(host):
    """After a run of CheckpointLoaderSimple → Apply Causal Reference → Apply Pose Guidance → Apply Identity (ArcFace
    face tokens of the reference photo) → KSampler, POST /free
    (unload models, free memory) leaves nothing of the pack alive: the test-only probe node (tests/host_probe) holds weak
    references to the patched MODEL, the patch objects, the reference latent, the pose maps and every parameter of
    the pose controller the node loaded; ComfyUI's loaded-model list must not hold a model carrying the pack's patches."""
    api = _native_api()
    api["11"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 4}}
    api["12"] = {"class_type": "PerformerApplyPoseGuidance",
                 "inputs": {"model": ["4", 0], "pose_controller": "native_pose_controller_sd15.safetensors",
                            "skeleton": ["11", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    api["14"] = {"class_type": "PerformerApplyIdentity",
                 "inputs": {"model": ["12", 0], "identity_adapter": "native_identity_sd15.safetensors",
                            "face_image": ["2", 0], "arcface": "tiny_arcface.onnx", "image_scale": 1.0,
                            "face_scale": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    api["13"] = {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["14", 0]}}
    api["8"]["inputs"]["model"] = ["13", 0]
    api["10"]["inputs"]["filename_prefix"] = "performer/native_free"
    res = host.run(api, timeout=600)
    assert res["status"] == "execution_success", res["events"][-1]
    before = host.get("/performer_test/alive")
    assert {"patched MODEL", "CausalReferencePatch", "PoseGuidancePatch", "CausalReferencePatch.latent",
            "PoseGuidancePatch.skeleton", "PoseGuidancePatch.controller", "IdentityPatch", "IdentityPatch.kv"} \
        <= set(before["alive"]), before
    assert before["loaded_with_pack_patches"] >= 1, before  # the sampled clone is in ComfyUI's loaded-model list
    after = _free_and_wait(host)
    assert after["alive"] == [] and after["loaded_with_pack_patches"] == 0, after


def _free_and_wait(host, timeout=60):
    """POST /free, then wait until the probe sees nothing of the pack alive (/free runs between prompts)."""
    import time

    host.free()
    deadline, now = time.time() + timeout, host.get("/performer_test/alive")
    while time.time() < deadline and (now["alive"] or now["loaded_with_pack_patches"]):
        time.sleep(1)
        now = host.get("/performer_test/alive")
    return now


def _run_probed(host, name, after, into):
    """Run a bundled workflow's API twin with the probe node between node ``after`` and the node ``into`` that takes
    its MODEL, on a freed host (so only this run's patches are alive); returns (api, result, probe counts)."""
    with open(os.path.join(tm.REPO, "tests", "workflows", f"{name}.api.json")) as fh:
        api = json.load(fh)
    _free_and_wait(host)
    api["99"] = {"class_type": "TestProbePerformerPatches", "inputs": {"model": [after, 0]}}
    api[into]["inputs"]["model"] = ["99", 0]
    res = host.run(api, timeout=900)
    assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
    return api, res, host.get("/performer_test/alive")["counts"]


def test_svd_native_workflow_one_reference_pass_and_poses_per_frame(host):
    """The bundled native SVD workflow (ImageOnlyCheckpointLoader on a real-size random SVD file with ViT-H CLIP
    vision, SVD_img2vid_Conditioning, Apply Causal Reference, Apply Pose Guidance, VideoLinearCFGGuidance, KSampler):
    one reference pass for the run, reads at every step, every call gets the features of frames 0–3."""
    api, res, counts = _run_probed(host, "performer_native_svd_reference_pose", after="8", into="9")
    assert len(_frames(host, res)) == 4
    steps = api["10"]["inputs"]["steps"]
    cr = counts["CausalReferencePatch"]
    assert cr["runs"] == 1 and cr["writes"] == 1 and cr["reads"] > 0 and cr["reads"] % steps == 0, counts
    assert counts["PoseGuidancePatch"]["last_calls"] == [[0, 1, 2, 3]] * steps, counts


def test_ade_context_windows_lora_reference_once_and_poses_per_window(host):
    """The bundled AnimateDiff-Evolved workflow (real-size random SD1.5 + LoRA + AnimateDiff v2 motion model, ADE's
    standard static context windows: 12 frames in windows of 8 overlapping by 4, core KSampler, 2 steps): one reference
    pass for the whole run, the 16 spatial self-attention layers read it in every window of every step, each window
    gets the pose features of its own frames, and the LoRA is really applied (strength 0 gives other frames)."""
    import copy

    import numpy as np

    from host import ADE_DIR, ADE_MISSING

    if not os.path.isdir(ADE_DIR):
        pytest.skip(ADE_MISSING)
    api, res, counts = _run_probed(host, "performer_native_ade_reference", after="10", into="15")
    frames = _frames(host, res)
    assert len(frames) == 12
    windows, steps = 2, 2
    assert counts["CausalReferencePatch"] == {"runs": 1, "writes": 1, "reads": 16 * windows * steps}, counts
    assert counts["PoseGuidancePatch"]["last_calls"] == [list(range(0, 8)), list(range(4, 12))] * steps, counts
    no_lora = copy.deepcopy(api)
    no_lora["2"]["inputs"]["strength_model"] = 0.0
    no_lora["17"]["inputs"]["filename_prefix"] = "performer/native_ade_no_lora"
    res2 = host.run(no_lora, timeout=900)
    assert res2["status"] == "execution_success", json.dumps(res2["events"][-1])[:2000]
    assert any(not np.array_equal(a, b) for a, b in zip(_frames(host, res2), frames))


def test_native_ivr_refine_workflow_re_denoises_through_core_sampling_and_cancel_stops_downstream(host):
    """The bundled native DiffPerformer workflow (checkpoint → Apply Causal Reference → Apply Pose Guidance → KSampler →
    Refine with IVR (native), with the body's 3D-aware flow): the two re-generations run through core sampling on the
    patched MODEL (two more sampling runs, each with its one reference pass and the poses of frames 0–11) and the refined
    video is saved; Cancel during the refinement ends the prompt as interrupted and the nodes after it
    do not run."""
    import threading

    api, res, counts = _run_probed(host, "performer_native_ivr_refine", after="7", into="15")
    steps = api["11"]["inputs"]["steps"]
    regen = api["15"]["inputs"]["total_steps"] // api["15"]["inputs"]["refresh_every"]
    cr, pg = counts["CausalReferencePatch"], counts["PoseGuidancePatch"]
    assert cr["runs"] == 1 + regen and cr["writes"] == 1 + regen, counts  # KSampler + each re-generation
    assert pg["runs"] == 1 + regen and pg["last_calls"] and all(c == list(range(12)) for c in pg["last_calls"]), counts
    previews = res["history"]["outputs"]["18"]["images"]  # SaveImage of the IVR renders, 12 frames per re-generation
    assert len(previews) == 12 * regen and res["history"]["outputs"]["17"]  # and the refined video was saved
    ran = {e["data"]["node"] for e in res["events"] if e["type"] == "executing" and e["data"].get("node")}
    assert {"15", "16", "17", "18"} <= ran

    long = json.loads(json.dumps(api))
    long["15"]["inputs"].update(total_steps=100000, refresh_every=50000, seed=1)
    started = threading.Event()

    def on_event(ev):
        if ev["type"] == "progress" and ev["data"].get("node") == "15" and not started.is_set():
            started.set()
            host.interrupt()

    res2 = host.run(long, timeout=600, on_event=on_event)
    assert started.is_set() and res2["status"] == "execution_interrupted"
    ran2 = {e["data"]["node"] for e in res2["events"] if e["type"] == "executing" and e["data"].get("node")}
    assert not {"16", "17", "18"} & ran2, ran2  # nothing downstream ran on the unfinished video
    assert not res2["history"].get("outputs", {}).get("18")


def test_original_model_unchanged_in_the_host_also_after_error_and_interrupt(host):
    """Same server: the plain CheckpointLoaderSimple → KSampler graph gives the same frames before and after the patched
    clone ran, failed (a reference of the wrong size) and was interrupted."""
    import threading
    import time

    import numpy as np

    patched_api = _native_api()
    plain_api = _native_api()
    plain_api["8"]["inputs"]["model"] = ["1", 0]
    del plain_api["4"]
    plain_api["10"]["inputs"]["filename_prefix"] = "performer/native_plain"

    def plain_frames():
        host.free()  # drop ComfyUI's output cache so KSampler really runs again on the loaded MODEL
        time.sleep(0.5)
        res = host.run(plain_api, timeout=600)
        assert res["status"] == "execution_success", res["events"][-1]
        return _frames(host, res)

    before = plain_frames()
    ok = host.run(patched_api, timeout=600)
    assert ok["status"] == "execution_success", ok["events"][-1]
    patched = _frames(host, ok)
    assert any(not np.array_equal(a, b) for a, b in zip(patched, before))  # the reference did something
    assert all(np.array_equal(a, b) for a, b in zip(plain_frames(), before))

    bad = _native_api()
    bad["3"]["inputs"]["width"] = 96  # reference 96×64 for a 64×64 video
    err = host.run(bad, timeout=600)
    assert err["status"] == "execution_error"
    assert "resize the reference image" in json.dumps(err["events"][-1])
    assert all(np.array_equal(a, b) for a, b in zip(plain_frames(), before))

    long = _native_api()
    long["8"]["inputs"]["steps"] = 200
    long["8"]["inputs"]["seed"] = 8
    started = threading.Event()

    def on_event(ev):
        if ev["type"] == "progress" and ev["data"].get("node") == "8" and not started.is_set():
            started.set()
            host.interrupt()

    res = host.run(long, timeout=600, on_event=on_event)
    assert started.is_set() and res["status"] == "execution_interrupted"
    assert all(np.array_equal(a, b) for a, b in zip(plain_frames(), before))


# ----------------------------------------------------------------------------- SVD (core's SVD_img2vid)


def _svd_sample(model, seed=0, frames=4, steps=3, cfg=2.5, ref=None):
    import comfy.sample
    import comfy.samplers

    g = torch.Generator().manual_seed(seed)
    lat = 8
    cond_lat = torch.randn(1, 4, lat, lat, generator=torch.Generator().manual_seed(99))
    clip = torch.randn(1, 1, tm.SVD["context_dim"], generator=torch.Generator().manual_seed(98))
    extra = {"concat_latent_image": cond_lat, "fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.0}
    pos = [[clip, dict(extra)]]
    neg = [[torch.zeros_like(clip), dict(extra, concat_latent_image=torch.zeros_like(cond_lat))]]
    noise = torch.randn(frames, 4, lat, lat, generator=g)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, pos, neg,
                                      torch.zeros_like(noise), disable_pbar=True, seed=seed)


def test_svd_native_patch_reads_spatial_layers_only_once_per_run_and_zero_is_exact():
    from performer_pkg.nodes.native import apply_causal_reference, spatial_self_attention_keys

    model = tm.core_svd_patcher()
    keys = spatial_self_attention_keys(model.model.diffusion_model)
    assert keys and all(k[2] == 0 for k in keys)  # depth-1 transformers: one spatial block each (its temporal twin shares the key)
    base = _svd_sample(model)
    ref = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    m0, p0 = apply_causal_reference(model, ref, 0.0)
    assert torch.equal(_svd_sample(m0), base) and p0.writes == 0
    m, p = apply_causal_reference(model, ref, 1.0)
    assert p.uncond == "keep"  # SVD's default: both CFG halves read the reference
    spatial_calls = []
    orig = p.attn1

    def spy(q, k, v, extra):
        spatial_calls.append((p._spatial(q, extra), q.shape[0], q.shape[1]))
        return orig(q, k, v, extra)

    for key in keys:
        m.model_options["transformer_options"]["patches_replace"]["attn1"][key] = spy
    out = _svd_sample(m)
    assert not torch.equal(out, base) and torch.isfinite(out).all()
    assert p.writes == 1 and p.runs == 1
    # every layer call is either spatial (rows = 2 CFG halves × 4 frames, or the 1-row reference pass; tokens = h·w)
    # or temporal (rows = h·w positions per row, tokens = 4 frames, or 1 in the reference pass); only spatial ones read
    assert {c for c in spatial_calls if c[0]} == {(True, 8, 64), (True, 1, 64), (True, 8, 16), (True, 1, 16)}
    assert {c for c in spatial_calls if not c[0]} == {(False, 128, 4), (False, 32, 4), (False, 64, 1), (False, 16, 1)}
    assert p.reads == 3 * len(keys)  # each spatial layer reads once per step, never in temporal blocks
    assert torch.equal(_svd_sample(model), base)  # the original is unchanged


def test_svd_pose_guidance_goes_to_the_noisy_channels_of_both_cfg_halves():
    """Core's SVD input is 8 channels (noisy latent ⊕ the image latent); the pose features go to the 4 noisy ones,
    for every frame of both CFG halves, and the image half is left alone (as in the pack's pipe)."""
    from performer_pkg.models.guidance.pose_controller import maps_to_tensor, pose_features
    from performer_pkg.nodes.native import apply_pose_guidance

    model = tm.core_svd_patcher()
    pc = tm.tiny_pose_controller(downsample=2)
    sk = torch.rand((4, 16, 16, 3), generator=torch.Generator().manual_seed(5))
    m, patch = apply_pose_guidance(model, pc, sk)
    seen = []
    hook = model.model.diffusion_model.input_blocks[0][0].register_forward_pre_hook(  # the first conv
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        base = _svd_sample(model, steps=1)
        guided = _svd_sample(m, steps=1)
    finally:
        hook.remove()
    assert not torch.equal(base, guided) and patch.last_calls == [[0, 1, 2, 3]]
    diff = seen[1] - seen[0]  # the first UNet call of each run: same noise, same σ
    assert diff.shape == (8, 8, 8, 8) and torch.equal(diff[:, 4:], torch.zeros_like(diff[:, 4:]))
    with torch.no_grad():
        feats = pose_features(pc, maps_to_tensor(sk, 16, 16, 4, "skeleton maps"), None)
    assert torch.allclose(diff[:, :4], feats.repeat(2, 1, 1, 1), atol=1e-5)


# ----------------------------------------------------------------------------- PoseCrafter on the native path


def _pipe_settings(cfg, **kw):
    from performer_pkg.models.sampling.sampler import VideoSettings

    return VideoSettings(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, cfg=cfg, seed=3, prompt="a person dancing",
                         window=16, stride=8, scheduler="ddim", **kw)


@pytest.mark.parametrize("reference", [False, True])
def test_keyframe_attention_parity_with_the_pipe(setup, reference):
    """Apply Key-frame Attention (alone, and under Apply Causal Reference, where frames read [reference, key frame])
    against the pipe's key-frame attention (VideoSettings.keyframe), CFG 3 so both halves are exercised."""
    from performer_pkg.models.sampling.sampler import sample_video
    from performer_pkg.nodes.native import apply_keyframe_attention

    before = options_snapshot(setup["model"])
    pipe = sample_video(setup["bb"], _pipe_settings(3.0, keyframe=1), setup["ref"], use_reference_attention=reference)
    base = patched(setup)[0] if reference else setup["model"]
    m, kp = apply_keyframe_attention(base, 1)
    core = core_sample(m, setup, pipe_noise(), 3.0)
    assert (core - pipe).abs().max() < 1e-4
    # the key frame's effect agrees between the two paths (compared on its own: the random tiny model's is small)
    d_core = core - core_sample(base, setup, pipe_noise(), 3.0)
    d_pipe = pipe - sample_video(setup["bb"], _pipe_settings(3.0), setup["ref"], use_reference_attention=reference)
    # (≈3e-4 under the reference, against float32 differences of ≈3e-5 between the paths; a patch that read nothing
    # or the wrong frame would differ by the whole effect)
    assert d_pipe.abs().max() > 2.5e-4
    assert (d_core - d_pipe).abs().max() < 0.25 * d_pipe.abs().max()
    assert kp.applied > 0 and kp.sigma_range is None
    assert options_snapshot(setup["model"]) == before


def test_keyframe_attention_under_core_windows_needs_the_key_frame_in_each_window(setup):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import apply_keyframe_attention

    def windowed(keyframe):
        m, kp = apply_keyframe_attention(setup["model"], keyframe)
        w = ContextWindowsManualNode.execute(m, context_length=2, context_overlap=1, context_schedule="standard_static",
                                             context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0)
        return (w[0] if isinstance(w, tuple) else w.result[0]), kp

    m, kp = windowed(1)  # windows [0, 1] and [1, 2] both hold frame 1 (steps = frames - 1: see the reference test)
    out = core_sample(m, setup, pipe_noise(), 1.0, steps=FRAMES - 1)
    assert torch.isfinite(out).all() and kp.applied > 0
    m, _ = windowed(0)
    with pytest.raises(BadInputError, match="key frame 0 is not among the frames"):
        core_sample(m, setup, pipe_noise(), 1.0, steps=FRAMES - 1)
    with pytest.raises(BadInputError, match="apply it once"):
        apply_keyframe_attention(apply_keyframe_attention(setup["model"], 0)[0], 0)


def _face_poses():
    """A reference pose and FRAMES target poses on the video canvas: face and both hands, moved per frame by known
    affines (shift + scale), a few points hidden."""
    from performer_pkg.models.pose.sequence import FACE, LHAND, RHAND, N_POINTS, PoseSequence

    rng = np.random.default_rng(4)
    k = np.zeros((1 + FRAMES, 1, N_POINTS, 3), np.float32)
    for part, (cx, cy, r) in ((FACE, (16, 9, 4)), (LHAND, (7, 22, 3)), (RHAND, (25, 22, 3))):
        n = len(range(N_POINTS)[part])
        pts = rng.uniform(-r, r, (n, 2)) + (cx, cy)
        for f in range(1 + FRAMES):
            a = 1.0 + 0.1 * f
            k[f, 0, part, :2] = (pts - (cx, cy)) * a + (cx + 1.5 * f, cy - 0.7 * f)
            k[f, 0, part, 2] = 1.0
    k[2, 0, FACE.start:FACE.start + 5, 2] = 0.0
    return PoseSequence(k[:1], SIZE, SIZE), PoseSequence(k[1:], SIZE, SIZE)


@pytest.mark.parametrize("step", [0, 6])
def test_latent_edit_parity_with_the_pipe_at_a_chosen_step(setup, step):
    """Apply Latent Edit against the pipe's PoseCrafter edit (``step_hook`` + ``edit_latents``), from the same replicated
    start latent, at step 0 and at step 6 of 20.  The pipe's latents are core's times √ᾱ, so the start and source go
    into core as LATENT = pipe latent · √(1+σ₀²) / 0.18215, sampled without added noise."""
    import comfy.sample
    import comfy.samplers

    from performer_pkg.models.posecrafter.editing import edit_latents
    from performer_pkg.models.sampling.sampler import sample_video
    from performer_pkg.nodes.native import apply_latent_edit, pose_landmarks

    ref_pose, tgt = _face_poses()
    g = torch.Generator().manual_seed(11)
    src_vp = torch.randn(1, 4, 1, SIZE // 2, SIZE // 2, generator=g)  # the "inverted" reference, pipe variables
    start_vp = src_vp.repeat(1, 1, FRAMES, 1, 1)
    ref_lm = pose_landmarks(ref_pose, 0)
    tgt_lm = [pose_landmarks(tgt, i) for i in range(FRAMES)]

    def hook(i, lat):
        return edit_latents(lat, src_vp[0, :, 0].to(lat.dtype), ref_lm, tgt_lm, 2, margin=2.0)[0] if i == step else lat

    pipe = sample_video(setup["bb"], _pipe_settings(3.0), setup["ref"], use_reference_attention=False,
                        start_latents=start_vp, step_hook=hook)
    unedited = sample_video(setup["bb"], _pipe_settings(3.0), setup["ref"], use_reference_attention=False,
                            start_latents=start_vp)
    sigmas, ms = ddim_sigmas(setup["model"])
    to_core = math.sqrt(1 + float(sigmas[0]) ** 2) / SCALE
    before = options_snapshot(setup["model"])
    m, patch = apply_latent_edit(setup["model"], src_vp[:, :, 0] * to_core, ref_pose, 0, tgt, step, margin=2.0)
    start = start_vp[0].permute(1, 0, 2, 3) * to_core
    steps_seen = []
    out = comfy.sample.sample_custom(m, torch.zeros_like(start), 3.0, comfy.samplers.sampler_object("ddim"), sigmas,
                                     setup["pos"], setup["neg"], start, disable_pbar=True, seed=0,
                                     callback=lambda i, d, x, t: steps_seen.append((i, t)))
    a0 = 1.0 / (1.0 + float(ms.sigmas[0]) ** 2)
    core = (out * SCALE * math.sqrt(a0)).permute(1, 0, 2, 3)[None]
    assert (pipe - unedited).abs().max() > 1e-2  # the edit changed the video …
    assert (core - pipe).abs().max() < 1e-4  # … the same way on both paths
    assert steps_seen == [(i, STEPS) for i in range(STEPS)]  # one progress count over both halves of the split
    assert patch.runs == 1 and all(r["face"].startswith("edited") for r in patch.reports)
    assert options_snapshot(setup["model"]) == before


def test_latent_edit_refuses_what_it_cannot_do(setup):
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.pose.sequence import empty
    from performer_pkg.nodes.native import apply_latent_edit

    ref_pose, tgt = _face_poses()
    src = torch.zeros(1, 4, SIZE // 2, SIZE // 2)
    with pytest.raises(BadInputError, match="no face or hand with 3 visible landmarks"):
        apply_latent_edit(setup["model"], src, empty(1, SIZE, SIZE), 0, tgt)
    with pytest.raises(BadInputError, match="canvas"):
        apply_latent_edit(setup["model"], src, ref_pose.copy(width=64), 0, tgt)
    with pytest.raises(BadInputError, match="one frame"):
        apply_latent_edit(setup["model"], src[0], ref_pose, 0, tgt)
    m, _ = apply_latent_edit(setup["model"], src, ref_pose, 0, tgt, edit_step=25)
    with pytest.raises(BadInputError, match="edit_step is 25 but this sampler runs 4 steps"):
        core_sample(m, setup, pipe_noise(), 1.0, steps=4)
    m, _ = apply_latent_edit(setup["model"], src, ref_pose, 0, empty(FRAMES + 1, SIZE, SIZE))
    with pytest.raises(BadInputError, match="target_poses has 4 frames but the sampled latent has 3"):
        core_sample(m, setup, pipe_noise(), 1.0, steps=4)


def test_svd_identity_reads_spatial_and_temporal_cross_attention_per_cfg_half():
    """Apply Identity on core's SVD: face tokens in every video transformer's spatial *and* temporal cross-attention
    (core runs both under one attn2 key; the patch tells them apart by the call's shape). Zero scale is exactly the
    unpatched model; the original is unchanged; and one temporal call, checked against the shared maths by hand, gives
    each CFG half's rows that half's tokens (rows of a temporal call are each half's h·w positions)."""
    from comfy.ldm.modules.attention import optimized_attention

    from performer_pkg.models.attention import maths as AM
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import apply_identity, temporal_cross_attention_keys

    model = tm.core_svd_patcher()
    before = options_snapshot(model)
    face = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(3)), dim=-1)
    base = _svd_sample(model)
    m0, _ = apply_identity(model, tm.native_svd_identity_adapter(), None, face, face_scale=0.0, image_scale=0.0)
    assert torch.equal(_svd_sample(m0), base)
    m, patch = apply_identity(model, tm.native_svd_identity_adapter(), None, face)
    out = _svd_sample(m)
    assert (out - base).abs().max() > 1e-3
    assert patch.temporal_reads > 0 and patch.reads > patch.temporal_reads  # both kinds of layer read the tokens
    assert torch.equal(_svd_sample(model), base) and options_snapshot(model) == before

    key = next(iter(temporal_cross_attention_keys(model.model.diffusion_model)))
    (kc, vc, ku, vu, _), = patch.kv_temporal[key]
    frames, h, w, c, heads = 4, 3, 5, kc.shape[-1], 2
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2 * h * w, frames, c, generator=g)  # uncond half's positions, then cond half's: (b s) rows
    k, v = torch.randn(2 * h * w, 1, c, generator=g), torch.randn(2 * h * w, 1, c, generator=g)
    opts = {"block": key[:2], "block_index": key[2], "n_heads": heads, "cond_or_uncond": [1, 0],
            "activations_shape": [2 * frames, c, h, w]}
    got = patch.attn2(q, k, v, opts)
    want = AM.decoupled_cross_attention(q, k, v, heads, [(torch.cat([ku.expand(h * w, -1, -1), kc.expand(h * w, -1, -1)]),
                                                          torch.cat([vu.expand(h * w, -1, -1), vc.expand(h * w, -1, -1)]), 1.0)],
                                        lambda q_, k_, v_, h_: optimized_attention(q_, k_, v_, h_))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(kc, ku)  # the halves' tokens differ, so a wrong pick would fail above
    with pytest.raises(BadInputError, match="no CLIP-image tokens.*SVD reads the CLIP embedding"):
        apply_identity(model, tm.native_svd_identity_adapter(), torch.randn(1, 32), face)
    with pytest.raises(BadInputError, match="made for another UNet"):
        apply_identity(model, tm.native_identity_adapter(), None, face)
