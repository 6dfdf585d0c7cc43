"""Apply Causal Reference on core's Wan 2.x DiT (nodes/native_wan.py), in-process with core's own classes.

The models are core's ``WanModel`` / ``AnimateWanModel`` at a tiny width (128 channels, one head, 2 or 5 blocks),
built from a state dict in the released files' key layout and loaded by core's own detection and loader
(``tiny_models.core_wan_patcher``).  Sampling is core's (``comfy.sample.sample``, Euler, the model's flow sampling).
Text embeddings are stand-ins (core's umt5-xxl has a fixed real size).
"""
import math

import pytest
import torch

import tiny_models as tm

tm.ensure_comfy_importable()

FRAMES, H, W = 3, 8, 8  # latent frames and size


@pytest.fixture(scope="module")
def wan():
    return tm.core_wan_patcher()


def cond(seed):
    return [[tm.wan_text(seed), {}]]


def ref_latent(seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 16, 1, H, W), generator=g)


def sample(model, seed=0, steps=3, cfg=3.0, callback=None, frames=FRAMES, positive=None, negative=None):
    import comfy.sample

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 16, frames, H, W), generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive or cond(62), negative or cond(64),
                               torch.zeros_like(noise), callback=callback, disable_pbar=True, seed=seed)


def patched(model, strength=1.0, **kw):
    from performer_pkg.nodes.native import apply_causal_reference

    return apply_causal_reference(model, ref_latent(), strength, **kw)


def snapshot(model):
    return repr(model.model_options), {k: {kk: len(v) for kk, v in d.items()} for k, d in model.wrappers.items()}


def test_strength_zero_is_exact_the_reference_acts_and_the_original_is_untouched(wan):
    before = snapshot(wan)
    base = sample(wan)
    m0, p0 = patched(wan, 0.0)
    assert torch.equal(sample(m0), base)
    assert p0.writes == 0 and p0.reads == 0
    m1, p1 = patched(wan, 1.0)
    with_ref = sample(m1)
    assert (with_ref - base).abs().max() > 1e-3
    assert p1.runs == 1 and p1.writes == 1
    assert p1.reads == 3 * 2 * 1  # 3 steps × 2 blocks, CFG halves batched in one call
    assert torch.equal(sample(wan), base)
    assert snapshot(wan) == before
    assert "patches_replace" not in wan.model_options.get("transformer_options", {})


def test_reference_pass_once_per_run_also_across_core_context_windows(wan):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    m, patch = patched(wan)
    out = ContextWindowsManualNode.execute(m, context_length=2, context_overlap=1, context_schedule="standard_static",
                                           context_stride=1, closed_loop=False, fuse_method="pyramid", dim=2)
    windowed = out[0] if isinstance(out, tuple) else out.result[0]
    seen = []
    orig = patch.apply_model

    def counting(executor, x, *a, **k):
        seen.append(x.shape[2])
        return orig(executor, x, *a, **k)

    windowed.wrappers["apply_model"]["performer_causal_reference"] = [counting]
    sample(windowed, frames=4, steps=2)
    assert seen == [2] * 3 * 2, seen  # three windows of two latent frames per step …
    assert patch.writes == 1 and patch.runs == 1  # … and one reference pass for the run
    assert patch.reads == 3 * 2 * 2  # every window reads it in both blocks
    sample(windowed, frames=4, steps=2)
    assert patch.writes == 2 and patch.runs == 2
    assert patch.run is None and not patch.last_run.cache


@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_state_released_and_original_intact_after_error_and_interrupt(wan, how):
    import comfy.model_management

    before = snapshot(wan)
    base = sample(wan, seed=9)
    m, patch = patched(wan)

    def stop(step, *a, **k):
        if step == 1:
            raise comfy.model_management.InterruptProcessingException() if how == "interrupt" else RuntimeError("boom")

    with pytest.raises((comfy.model_management.InterruptProcessingException, RuntimeError)):
        sample(m, seed=9, callback=stop)
    assert patch.writes == 1 and patch.run is None and not patch.last_run.cache
    assert snapshot(wan) == before
    assert torch.equal(sample(wan, seed=9), base)
    sample(m, seed=9, steps=1)
    assert patch.writes == 2


def _masked_override(mask):
    def override(func, q, k, v, *a, **kw):
        return func(q, k, v, *a, mask=mask, **kw)
    return override


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_two_passes_equal_one_causally_masked_attention_over_reference_and_video_tokens(wan, strength):
    """Layer level, block 0 of core's DiT: the write pass (reference tokens at temporal RoPE position −1) and the read
    pass (video tokens at 0 … T−1) give the video tokens exactly what one attention over [reference; video] tokens with
    positions −1 … T−1 gives them under a block-causal mask (reference rows do not see video keys; the video's keys on
    the reference carry log(strength)).  The row that does not read (the unconditional half in drop mode) equals plain
    self-attention over the video tokens."""
    from performer_pkg.nodes.native import _Run
    from performer_pkg.nodes.native_wan import REFERENCE_T, WanCausalReferencePatch

    dm = wan.model.diffusion_model
    attn = dm.blocks[0].self_attn
    g = torch.Generator().manual_seed(3)
    hw = (H // 2) * (W // 2)  # tokens per latent frame after the 2×2 patch
    x_ref = torch.randn((1, hw, dm.dim), generator=g)
    x_vid = torch.randn((2, FRAMES * hw, dm.dim), generator=g)
    f_ref = dm.rope_encode(1, H, W, transformer_options={"rope_options": {"shift_t": REFERENCE_T}})
    f_vid = dm.rope_encode(FRAMES, H, W)
    f_all = dm.rope_encode(FRAMES + 1, H, W, transformer_options={"rope_options": {"shift_t": REFERENCE_T}})
    assert torch.equal(torch.cat([f_ref, f_vid], 1), f_all)  # the same positions either way

    patch = WanCausalReferencePatch(torch.zeros(1, 16, 1, H, W), strength, "drop", 0.0, 1.0)
    patch.run = _Run()
    with torch.no_grad():
        patch.run.mode = "write"
        attn(x_ref, f_ref, transformer_options=patch._with_override(0, {"img": x_ref, "transformer_options": {}}))
        patch.run.mode, patch.run.active, patch.run.reads_rows = "read", True, torch.tensor([True, False])
        two = attn(x_vid, f_vid, transformer_options=patch._with_override(0, {"img": x_vid, "transformer_options": {}}))

        n = hw + FRAMES * hw
        mask = torch.zeros(n, n)
        mask[:hw, hw:] = float("-inf")  # the reference never sees the video
        mask[hw:, :hw] = math.log(strength)
        one = attn(torch.cat([x_ref, x_vid[:1]], 1), f_all, transformer_options={"optimized_attention_override": _masked_override(mask)})
        plain = attn(x_vid[1:], f_vid)
    assert patch.reads == 1
    assert (two[:1] - one[:, hw:]).abs().max() < 1e-5
    assert (two[1:] - plain).abs().max() < 1e-6
    # and the reference matters here (a read that did nothing would fail the first comparison only by luck)
    assert (two[:1] - attn(x_vid[:1], f_vid)).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", ["i2v", "animate"])
def test_image_to_video_and_wan_animate_write_from_the_first_conditioning_frame(model_type):
    """With image conditioning (``concat_latent_image``) and Wan-Animate's pose latents, the write pass takes the first
    latent frame of the image conditioning and leaves the pose latents out; the video samples with them."""
    model = tm.core_wan_patcher(model_type=model_type)
    g = torch.Generator().manual_seed(4)
    extra = {"concat_latent_image": torch.randn((1, 16, FRAMES, H, W), generator=g),
             "concat_mask": torch.zeros((1, 4, FRAMES, H, W))}
    if model_type == "animate":
        extra["pose_video_latent"] = torch.randn((1, 16, FRAMES - 1, H, W), generator=g)
    pos, neg = [[tm.wan_text(62), dict(extra)]], [[tm.wan_text(64), dict(extra)]]
    base = sample(model, positive=pos, negative=neg)
    m, patch = patched(model)
    seen = {}
    orig = patch._write

    def spy(executor, base_, x, c_concat, c_crossattn, topts, kwargs, *a):
        seen.update(concat=None if c_concat is None else tuple(c_concat.shape), kwargs=sorted(kwargs))
        return orig(executor, base_, x, c_concat, c_crossattn, topts, kwargs, *a)

    patch._write = spy
    out = sample(m, positive=pos, negative=neg)
    assert patch.writes == 1 and (out - base).abs().max() > 1e-3
    assert seen["concat"] == (2, 20, FRAMES, H, W)  # the run's c_concat: the write pass slices row and frame 0
    if model_type == "animate":
        assert "pose_latents" in seen["kwargs"]  # given to the video's calls, left out of the write pass


def test_an_earlier_block_replacement_is_kept_and_bad_inputs_are_refused(wan):
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native import apply_causal_reference

    calls, positions = [], []

    def earlier(args, extra):
        calls.append(1)
        positions.append(args["pe"])
        return extra["original_block"](args)

    other = wan.clone()
    other.set_model_patch_replace(earlier, "dit", "double_block", 1)
    m, patch = apply_causal_reference(other, ref_latent(), 1.0)
    sample(m, steps=1)
    assert calls == [1, 1] and patch.reads == 2  # write + read both ran block 1 through the earlier replacement
    dm = wan.model.diffusion_model
    # the write pass ran at temporal RoPE position −1 on the video's grid, the video at 0 … T−1
    assert torch.equal(positions[0], dm.rope_encode(1, H, W, transformer_options={"rope_options": {"shift_t": -1.0}}))
    assert torch.equal(positions[1], dm.rope_encode(FRAMES, H, W))
    with pytest.raises(BadInputError, match="already has Apply Causal Reference"):
        apply_causal_reference(m, ref_latent(), 1.0)
    with pytest.raises(BadInputError, match="16"):
        apply_causal_reference(wan, torch.zeros(1, 4, 1, H, W), 1.0)  # an SD latent
    with pytest.raises(BadInputError, match="one Wan latent frame"):
        apply_causal_reference(wan, torch.zeros(1, 16, 2, H, W), 1.0)
    with pytest.raises(BadInputError, match="uncond"):
        apply_causal_reference(wan, ref_latent(), 1.0, uncond="maybe")
    vace = tm.core_wan_patcher(model_type="vace")
    assert type(vace.model.diffusion_model).__name__ == "VaceWanModel"
    with pytest.raises(BadInputError, match="VaceWanModel.*not tested"):
        apply_causal_reference(vace, ref_latent(), 1.0)
    small, _ = apply_causal_reference(wan, torch.zeros(1, 16, 1, 2, 2), 1.0)
    with pytest.raises(ValueError, match="resize the reference"):
        sample(small, steps=1)


# ----------------------------------------------------------------------------- the bundled workflow in the test host
WORKFLOW = "performer_native_wan_animate_reference"




def test_bundled_wan_animate_workflow_reference_once_per_run_and_ivr_through_core_sampling(host):
    """The bundled Wan workflow as the test host runs it (``workflow_tools.for_test_host``: umt5-xxl and CLIP vision H
    stand-ins; the tiny Wan 2.2 Animate DiT and Wan 2.1 VAE load through core's UNETLoader / VAELoader).
    Load Pose → Pose Frames (9 = 4k+1) → Retarget → Draw Skeleton Maps → WanAnimateToVideo, Apply Causal Reference on
    the Wan MODEL → KSampler → TrimVideoLatent → VAEDecode → Refine with IVR (native) with the bodies' 3D-aware flow:
    one reference pass per sampling run (KSampler + each IVR re-generation), read by all 5 blocks at every step; the
    skeleton video, the raw and the refined video have 9 frames."""
    import json
    import os

    from workflow_tools import for_test_host

    with open(os.path.join(tm.REPO, "tests", "workflows", f"{WORKFLOW}.api.json")) as fh:
        api = for_test_host(WORKFLOW, json.load(fh))
    from test_native import _free_and_wait

    _free_and_wait(host)
    api["99"] = {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["18", 0]}}
    for k in ("19", "26"):
        api[k]["inputs"]["model"] = ["99", 0]
    res = host.run(api, timeout=900)
    assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
    counts = host.get("/performer_test/alive")["counts"]["WanCausalReferencePatch"]
    regen = api["26"]["inputs"]["total_steps"] // api["26"]["inputs"]["refresh_every"]
    steps, blocks = api["19"]["inputs"]["steps"], 5
    assert api["26"]["inputs"]["steps"] == steps
    assert counts == {"runs": 1 + regen, "writes": 1 + regen, "reads": blocks * steps * (1 + regen)}, counts
    out = res["history"]["outputs"]
    assert len(out["14"]["performer_frames"]) == 9 and len(out["29"]["images"]) == 9  # skeleton maps, raw frames
    groups = out["26"]["performer_meta"][0]["groups"]  # the IVR preview: 9 frames per shown stage
    assert len(groups) >= regen and set(groups) == {9} and out["28"]  # … and the refined video was saved


def test_pose_frames_and_refine_ivr_keep_wan_frame_counts(wan):
    """Pose Frames cuts a range to 4k + 1 frames; Refine with IVR (native) refuses a video of a count core's Wan VAE
    would not give back (8 frames → 5 after a round trip), before any work, naming the counts it keeps."""
    import numpy as np

    import comfy.sd
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.pose.sequence import PoseSequence
    from performer_pkg.nodes.pose import PerformerPoseFrames
    from performer_pkg.nodes.refine import PerformerRefineIVRNative

    kp = np.zeros((12, 1, 133, 3), np.float32)
    kp[:, 0, 0, 0] = np.arange(12)
    pose = PoseSequence(kp, 64, 64)
    out = PerformerPoseFrames.execute(pose, 1, 10, "4k+1")
    assert out.result[1] == 9 and out.result[0].keypoints[:, 0, 0, 0].tolist() == list(range(1, 10))
    assert PerformerPoseFrames.execute(pose, 2, 0, "any").result[1] == 10
    with pytest.raises(BadInputError, match="start"):
        PerformerPoseFrames.execute(pose, 12, 0, "any")

    vae = comfy.sd.VAE(sd={k: v.float() for k, v in tm.wan_vae_state().items()})
    assert vae.latent_dim == 3
    video = torch.rand((9, 16, 16, 3))
    assert vae.decode(vae.encode(video)).reshape(-1, 16, 16, 3).shape[0] == 9  # core's Wan VAE keeps 9 = 4·2 + 1
    with pytest.raises(BadInputError, match=r"8 frames.*give back 5.*e.g. 5 or 9; Wan.s: 4k \+ 1"):
        PerformerRefineIVRNative.execute(wan, cond(62), cond(64), vae, video[:8], 40, 20, 0.5, 0.2, 0.0, 2, 5.0, "euler",
                                         "simple", 0)


def test_unet_only_native_patches_refuse_a_wan_model_clearly(wan):
    """Pose Guidance, Identity, Key-frame Attention and Latent Edit are written for core's UNet; on a Wan MODEL each
    says so (no silent no-op, no crash deep in sampling)."""
    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes import native

    with pytest.raises(BadInputError, match="Apply Pose Guidance supports UNet models.*WanAnimateToVideo"):
        native.apply_pose_guidance(wan, tm.tiny_pose_controller(), skeleton=torch.zeros(3, 16, 16, 3))
    with pytest.raises(BadInputError, match="Apply Identity supports UNet models"):
        native.apply_identity(wan, tm.native_identity_adapter(), face_embeds=torch.zeros(1, 512))
    with pytest.raises(BadInputError, match="Apply Key-frame Attention supports UNet models"):
        native.apply_keyframe_attention(wan, 0)
    with pytest.raises(BadInputError, match="Apply Latent Edit supports"):
        native.apply_latent_edit(wan, torch.zeros(1, 16, 1, H, W), None, 0, None)


def test_wan22_ti2v_with_per_frame_timesteps_from_the_noise_mask():
    """Wan 2.2 TI2V 5B (48-channel latents; core's WAN22 turns the noise mask into per-frame timesteps): with the start
    frame held by a noise mask, strength 0 is exact, the reference acts, the write pass runs once (without the
    video's mask) and the held frame stays the given one."""
    import comfy.sample

    model = tm.core_wan_patcher(model_type="ti2v")
    assert type(model.model).__name__ == "WAN22" and model.model.latent_format.latent_channels == 48
    g = torch.Generator().manual_seed(8)
    latent = torch.zeros((1, 48, FRAMES, H, W))
    latent[:, :, :1] = torch.randn((1, 48, 1, H, W), generator=g)
    mask = torch.ones((1, 1, FRAMES, H, W))
    mask[:, :, :1] = 0.0
    noise = torch.randn((1, 48, FRAMES, H, W), generator=g)

    def run(m):
        return comfy.sample.sample(m, noise, 3, 5.0, "euler", "simple", cond(62), cond(64), latent, noise_mask=mask,
                                   disable_pbar=True, seed=0)

    from performer_pkg.nodes.native import apply_causal_reference

    base = run(model)
    ref = torch.randn((1, 48, 1, H, W), generator=g)
    m0, _ = apply_causal_reference(model, ref, 0.0)
    assert torch.equal(run(m0), base)
    m1, p1 = apply_causal_reference(model, ref, 1.0)
    out = run(m1)
    assert p1.writes == 1 and (out - base).abs().max() > 1e-3
    assert torch.allclose(out[:, :, :1], latent[:, :, :1], atol=1e-5)  # the held start frame


def test_face_crops_frame_the_face_landmarks_as_wan_animate_and_refuse_a_faceless_pose():
    """Face Crops: the box around the 68 face landmarks grown to 1.3× the area (width evenly, height 3/4 up, 1/4 down),
    made square and resized; a frame without landmarks takes its neighbour's box; mismatched inputs are refused."""
    import numpy as np

    from performer_pkg.models.errors import BadInputError
    from performer_pkg.models.pose.sequence import PoseSequence
    from performer_pkg.nodes.pose import PerformerFaceCrops

    kp = np.zeros((3, 1, 133, 3), np.float32)
    xs, ys = np.meshgrid(np.linspace(40, 60, 17), np.linspace(30, 50, 4))
    kp[:2, 0, 23:91, :2] = np.stack([xs.ravel(), ys.ravel()], 1)[:68]
    kp[:2, 0, 23:91, 2] = 1.0
    kp[1, 0, 23:91, 0] += 25  # frame 1 is 25 px to the right; frame 2 has no face
    pose = PoseSequence(kp, 128, 96)
    img = torch.zeros((3, 96, 128, 3))
    img[:, 40, 50] = 1.0  # a bright pixel inside the face box of frame 0 (not of frame 1's)
    faces = PerformerFaceCrops.execute(img, pose, 64, 1.3, 0).result[0]
    assert faces.shape == (3, 64, 64, 3)
    assert faces[0].max() > 0 and faces[1].max() == 0  # frame 1's box moved right past the pixel
    assert torch.equal(faces[2], faces[1])  # frame 2 reuses its neighbour's box
    from performer_pkg.models.pose.face import face_boxes

    b = face_boxes(kp[:, 0], 128, 96, 1.3)[0]
    w, h, g = 20.0, 20.0, np.sqrt(1.3)
    assert np.allclose(b, [40 - (g - 1) * w / 2, 30 - 3 * (g - 1) * h / 4, 60 + (g - 1) * w / 2, 50 + (g - 1) * h / 4], atol=1e-4)
    with pytest.raises(BadInputError, match="2 frames but the pose has 3"):
        PerformerFaceCrops.execute(img[:2], pose, 64, 1.3, 0)
    with pytest.raises(BadInputError, match="face landmarks"):
        PerformerFaceCrops.execute(img, PoseSequence(np.zeros_like(kp), 128, 96), 64, 1.3, 0)


def test_skeleton_maps_and_face_crops_as_wan_animate_takes_them():
    """Draw Skeleton Maps at the video size and Face Crops at 512 go into core's WanAnimateToVideo without resampling:
    its pose latent is exactly the Wan VAE's encoding of the maps (IMAGE layout (F, H, W, 3) in [0, 1], as core
    reads it), its face pixels are the crops in [-1, 1], (1, 3, F, 512, 512); the tiny Wan 2.2 Animate model samples
    with both and with Apply Causal Reference (one write pass, without them).  One frame, one step: Wan-Animate's
    motion encoder is real size (core fixes it) and runs on every 512² crop of every call."""
    import numpy as np

    import comfy.sample
    import comfy.sd
    from comfy_extras.nodes_wan import WanAnimateToVideo
    from performer_pkg.models.pose.sequence import PoseSequence
    from performer_pkg.nodes.native import apply_causal_reference
    from performer_pkg.nodes.pose import PerformerDrawPose, PerformerFaceCrops

    F_, S = 1, 64
    g = np.random.default_rng(0)
    kp = np.zeros((F_, 1, 133, 3), np.float32)
    kp[:, 0, :, :2] = 16 + 32 * g.random((F_, 133, 2))
    kp[:, 0, :, 2] = 1.0
    pose = PoseSequence(kp, S, S)
    skel = PerformerDrawPose.execute(pose, S, S, True, True, False, 2).result[0]
    video = torch.rand((F_, S, S, 3), generator=torch.Generator().manual_seed(1))
    faces = PerformerFaceCrops.execute(video, pose, 512, 1.3, 0).result[0]
    vae = comfy.sd.VAE(sd={k: v.float() for k, v in tm.wan_vae_state().items()})
    ref = video[:1]
    pos, neg, latent, trim, _, _ = WanAnimateToVideo.execute(cond(62), cond(64), vae, S, S, F_, 1, None, 0,
                                                             reference_image=ref, face_video=faces, pose_video=skel).result
    d = pos[0][1]
    assert torch.equal(d["pose_video_latent"], vae.encode(skel))
    assert d["face_video_pixels"].shape == (1, 3, F_, 512, 512)
    assert torch.allclose(d["face_video_pixels"][0, :, -1].permute(1, 2, 0), faces[-1] * 2 - 1, atol=1e-6)
    model = tm.core_wan_patcher(model_type="animate")
    m, patch = apply_causal_reference(model, vae.encode(ref), 1.0)
    x = latent["samples"]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = comfy.sample.sample(m, noise, 1, 5.0, "euler", "simple", pos, neg, x, disable_pbar=True, seed=0)
    assert out.shape == x.shape and torch.isfinite(out).all() and patch.writes == 1 and trim == 1


def test_a_reference_pass_that_reaches_no_self_attention_is_an_error_not_a_silent_no_op(wan):
    """A block replacement that runs the block without the transformer_options it was given (so the override never
    sees the self-attention) leaves the reference cache empty: the run stops with an error naming the cause."""
    from performer_pkg.nodes.native import apply_causal_reference

    def blind(args, extra):
        return extra["original_block"]({**args, "transformer_options": {}})

    other = wan.clone()
    for i in range(len(wan.model.diffusion_model.blocks)):
        other.set_model_patch_replace(blind, "dit", "double_block", i)
    m, patch = apply_causal_reference(other, ref_latent(), 1.0)
    with pytest.raises(RuntimeError, match="reached no self-attention layer"):
        sample(m, steps=1)
    assert patch.run is None and not patch.last_run.cache
