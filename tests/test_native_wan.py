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
    import comfy.model_management  # noqa: F401

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
    small, _ = apply_causal_reference(wan, torch.zeros(1, 16, 1, 2, 2), 1.0)
    with pytest.raises(ValueError, match="resize the reference"):
        sample(small, steps=1)
