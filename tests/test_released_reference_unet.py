"""A separate reference model (the ReferenceNet of Moore-AnimateAnyone, MusePose and Champ: reference_unet.pth) for
causal reference attention, on core's MODEL (nodes/native.py, nodes/native_released.load_reference_model) and in the
pack's pipe (models/attention/reference.py, models/backbones/loaders.with_reference_unet).

The released projects' reference attention (docs/research/released_pose_models.md §1.6): the ReferenceNet runs once at
t = 0 and banks each self-attention block's normed input tokens; the denoising UNet's own to_k / to_v project them and
every frame attends to [its own tokens, the reference tokens].  Independent check used here: with a reference UNet that
has the denoising UNet's own weights, the tokens projected by the same to_k / to_v are exactly the keys / values SCD's
same-model pass caches, so both paths must give the same video; with other weights the video changes.

Key names and shapes: tests/data/released_layouts/champ_moore_musepose_reference_unet.pth.json and
champ_moore_denoising_unet.pth.json, loaded on the meta device into the real-size module core builds for them.
"""
import json
import os

import pytest
import torch

import tiny_models as tm

tm.ensure_comfy_importable()

LAYOUTS = os.path.join(tm.HERE, "data", "released_layouts")


def _layout(name):
    with open(os.path.join(LAYOUTS, name)) as fh:
        return json.load(fh)["keys"]


def diffusers_state(core_model, drop_output=True):
    """A core SD1.5 MODEL's UNet weights under diffusers' names (the released files' layout), without the output layers
    the released ReferenceNets leave out."""
    from performer_pkg.nodes.native_released import diffusers_table

    table = diffusers_table(core_model.model.model_config.unet_config)
    sd = core_model.model.diffusion_model.state_dict()
    return {d: sd[c].clone() for d, c in table.items()
            if c in sd and not (drop_output and d.startswith(("conv_out.", "conv_norm_out.")))}


def _reference_file(tmp_path, core_model, name="reference_unet.pth"):
    torch.save(diffusers_state(core_model), str(tmp_path / name))
    return str(tmp_path / name)


def _sample(model, frames=3, steps=3, seed=0, cfg=3.0):
    import comfy.sample

    g = torch.Generator().manual_seed(seed)
    ctx = tm.SD15["context_dim"]
    pos, neg = [[torch.randn(1, 77, ctx, generator=g), {}]], [[torch.randn(1, 77, ctx, generator=g), {}]]
    noise = torch.randn(frames, 4, 8, 8, generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)


REF_LATENT = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))


# ----------------------------------------------------------------------------- layouts at real size (meta)

@pytest.mark.parametrize("name,output_layers", [("champ_moore_musepose_reference_unet.pth.json", False),
                                                ("champ_moore_denoising_unet.pth.json", True)])
def test_released_unet_layouts_load_strictly_into_cores_real_size_unet_on_meta(name, output_layers):
    """Core's detection of a diffusers UNet (what Load Diffusion Model and Load Reference UNet rely on) gives SD1.5's
    config; the released names map through core's table onto core's real-size UNetModel built on meta, all shapes
    equal. The ReferenceNet lacks only the output layers (which the reference pass never uses)."""
    import comfy.model_detection
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    keys = _layout(name)
    sd = {k: torch.empty(v, device="meta") for k, v in keys.items()}
    assert len(sd) == (686 if output_layers else 682)  # as docs/research records
    cfg = comfy.model_detection.unet_config_from_diffusers_unet({**sd, "conv_out.weight": torch.empty(4, 320, 3, 3, device="meta")})
    assert cfg["model_channels"] == 320 and cfg["context_dim"] == 768 and cfg["in_channels"] == 4
    table = comfy.utils.unet_to_diffusers(cfg)
    with torch.device("meta"):
        unet = UNetModel(**{k: v for k, v in cfg.items() if k != "dtype"}, operations=comfy.ops.disable_weight_init)
    core = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    want = {k: v for k, v in table.items() if v in core}  # diffusers name → core name, for the layers SD1.5 has
    assert set(want.values()) == set(core) and set(sd) <= set(want)
    mapped = {want[k]: v for k, v in sd.items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: core[k] for k in mapped}
    missing = set(core) - set(mapped)
    assert missing == (set() if output_layers else {"out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"})
    for k in missing:
        mapped[k] = torch.zeros(core[k], device="meta")
    unet.load_state_dict(mapped, strict=True, assign=True)


# ----------------------------------------------------------------------------- native

def test_native_separate_reference_with_the_models_own_weights_equals_scd(tmp_path):
    from performer_pkg.nodes.native import apply_causal_reference
    from performer_pkg.nodes.native_released import load_reference_model

    model = tm.core_sd15_patcher()
    ref_model = load_reference_model(model, _reference_file(tmp_path, model))
    assert ref_model.model is not model.model
    for strength in (1.0, 0.5):
        scd, p_scd = apply_causal_reference(model, REF_LATENT, strength)
        sep, p_sep = apply_causal_reference(model, REF_LATENT, strength, reference_model=ref_model)
        a, b = _sample(scd), _sample(sep)
        assert p_sep.writes == 1 and p_sep.reads == p_scd.reads > 0
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max()), (a - b).abs().max()
        assert sep.get_additional_models_with_key("performer_causal_reference") == [ref_model]


def test_native_separate_reference_changes_the_video_leaves_the_originals_and_refuses_misfits(tmp_path):
    from performer_pkg.models.errors import BadInputError, BadModelFileError
    from performer_pkg.nodes.native import apply_causal_reference
    from performer_pkg.nodes.native_released import load_reference_model

    model = tm.core_sd15_patcher()
    before = repr(model.model_options)
    other = load_reference_model(model, _reference_file(tmp_path, tm.core_sd15_patcher(seed=7), "other.pth"))
    ref_before = {k: v.clone() for k, v in other.model.state_dict().items()}
    base, scd = _sample(model), _sample(apply_causal_reference(model, REF_LATENT)[0])
    m, patch = apply_causal_reference(model, REF_LATENT, reference_model=other)
    sep = _sample(m)
    assert (sep - scd).abs().max() > 1e-3 and (sep - base).abs().max() > 1e-3
    zero = _sample(apply_causal_reference(model, REF_LATENT, 0.0, reference_model=other)[0])
    assert torch.equal(zero, base)
    # one reference pass per run, through the reference model (its tokens were cached, then projected by the model)
    assert patch.writes == 1 and patch.runs == 1 and patch.last_run.cache == {}
    assert torch.equal(_sample(model), base) and repr(model.model_options) == before
    assert all(torch.equal(v, other.model.state_dict()[k]) for k, v in ref_before.items())
    with pytest.raises(BadInputError, match="reference_model is the sampled model itself"):
        apply_causal_reference(model, REF_LATENT, reference_model=model)
    with pytest.raises(BadInputError, match="reference_model is SVD_img2vid"):
        apply_causal_reference(model, REF_LATENT, reference_model=tm.core_svd_patcher())
    with pytest.raises(BadInputError, match="do not match the model's"):
        apply_causal_reference(model, REF_LATENT, reference_model=tm.core_sd15_patcher(width_mult=2))


def test_reference_unet_files_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    from performer_pkg.models.errors import BadInputError, BadModelFileError
    from performer_pkg.nodes.native_released import load_reference_model

    model = tm.core_sd15_patcher()
    sd = diffusers_state(model)
    torch.save({k: v for k, v in sd.items() if "attn1.to_k" not in k}, str(tmp_path / "missing.pth"))
    with pytest.raises(BadModelFileError, match=r"missing\.pth is not a reference UNet for this MODEL.*attn1\.to_k"):
        load_reference_model(model, str(tmp_path / "missing.pth"))
    torch.save({f"unet.{k}": v for k, v in sd.items()}, str(tmp_path / "MimicMotion_1-1.pth"))
    with pytest.raises(BadModelFileError, match=r"MimicMotion_1-1\.pth holds an SVD UNet"):
        load_reference_model(model, str(tmp_path / "MimicMotion_1-1.pth"))
    torch.save(diffusers_state(tm.core_sd15_patcher(width_mult=2)), str(tmp_path / "wide.pth"))
    with pytest.raises(BadModelFileError, match=r"wide\.pth is not a reference UNet.*other shapes"):
        load_reference_model(model, str(tmp_path / "wide.pth"))
    raw = open(_reference_file(tmp_path, model), "rb").read()
    open(tmp_path / "truncated.pth", "wb").write(raw[: len(raw) // 3])
    with pytest.raises(BadModelFileError, match=r"truncated\.pth"):
        load_reference_model(model, str(tmp_path / "truncated.pth"))

    tm.evil_checkpoint(tmp_path / "evil.pth", "conv_in.weight")
    with pytest.raises(BadModelFileError, match=r"(?s)evil\.pth.*pickled code is refused"):
        load_reference_model(model, str(tmp_path / "evil.pth"))
    with pytest.raises(BadInputError, match="Load Released UNet needs the SD1.5-family MODEL"):
        load_reference_model(tm.core_svd_patcher(), str(tmp_path / "missing.pth"))
    with pytest.raises(BadModelFileError, match=r"reference_unet\.pth is not a denoising UNet.*missing.*conv_out"):
        load_reference_model(model, str(tmp_path / "reference_unet.pth"), denoising=True)


def test_denoising_unet_file_samples_like_the_model_it_was_taken_from(tmp_path):
    """A denoising_unet.pth in the released layout (diffusers names, output layers included) loaded as a MODEL gives
    the same samples as the core model whose weights it holds, and another one's differ."""
    from performer_pkg.nodes.native_released import load_reference_model

    model = tm.core_sd15_patcher()
    torch.save(diffusers_state(model, drop_output=False), str(tmp_path / "denoising_unet.pth"))
    loaded = load_reference_model(tm.core_sd15_patcher(seed=7), str(tmp_path / "denoising_unet.pth"), denoising=True)
    assert torch.equal(_sample(loaded), _sample(model))


# ----------------------------------------------------------------------------- the pack's pipe

def _pipe_reference_file(tmp_path, bb, name="reference_unet.pth", seed=None):
    sd = {k: v.clone() for k, v in bb.unet.state_dict().items()
          if "motion_modules" not in k and not k.startswith(("conv_out.", "conv_norm_out."))}
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    torch.save(sd, str(tmp_path / name))
    return str(tmp_path / name)


@pytest.fixture(scope="module")
def sd15_pipe(models_tree):
    from performer_pkg.models.backbones import loaders as backbones

    return backbones.load_sd15(models_tree[1]["sd15_file"], device="cpu",
                               tokenizer_dirs=[os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")])


def test_pipe_separate_reference_unet_with_the_pipes_weights_equals_scd_and_others_change_it(sd15_pipe, ad, tmp_path):
    """On the 2-D SD1.5 pipe a ReferenceNet with the pipe's own weights gives SCD's video; on the AnimateDiff pipe
    (whose same-model reference pass also runs the motion modules, which a 2-D ReferenceNet has not) it runs, once per
    run, and another ReferenceNet changes the video."""
    from performer_pkg.models.attention.reference import ReferenceState
    from performer_pkg.models.backbones.loaders import with_reference_unet
    from performer_pkg.models.sampling.sampler import VideoSettings, encode_reference, sample_video

    s = VideoSettings(frames=4, width=32, height=32, steps=3, cfg=7.5, seed=3, prompt="a person")
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    bb = sd15_pipe
    ref = encode_reference(bb, img)
    same = with_reference_unet(bb, _pipe_reference_file(tmp_path, bb))
    assert bb.reference_unet is None and same.reference_unet is not None and same.unet is bb.unet
    st = ReferenceState()
    a, b = sample_video(bb, s, ref), sample_video(same, s, ref, ref_state=st)
    assert st.writes == 1 and st.reads > 0
    assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max()), (a - b).abs().max()
    assert (sample_video(bb, s, ref, use_reference_attention=False) - a).abs().max() > 1e-3

    ref = encode_reference(ad, img)
    other = with_reference_unet(ad, _pipe_reference_file(tmp_path, ad, "other.pth", seed=1))
    st = ReferenceState()
    c = sample_video(other, s, ref, ref_state=st)
    assert st.writes == 1 and st.reads > 0 and not st.cache
    assert (c - sample_video(ad, s, ref)).abs().max() > 1e-3
    assert (c - sample_video(ad, s, ref, use_reference_attention=False)).abs().max() > 1e-3
    assert all(type(p).__name__ != "ReferenceAttnProcessor" for p in other.reference_unet.attn_processors.values())


def test_pipe_reference_unet_refusals(ad, svd_pipe, tmp_path):
    from performer_pkg.models.backbones.loaders import with_reference_unet
    from performer_pkg.models.errors import BadInputError, BadModelFileError

    path = _pipe_reference_file(tmp_path, ad)
    with pytest.raises(BadInputError, match="SD1.5 pipes.*this pipe is svd"):
        with_reference_unet(svd_pipe, path)
    sd = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("mid_block.")}, str(tmp_path / "nomid.pth"))
    with pytest.raises(BadModelFileError, match=r"nomid\.pth is not a reference UNet for this pipe.*mid_block"):
        with_reference_unet(ad, str(tmp_path / "nomid.pth"))


@pytest.fixture(scope="module")
def svd_pipe(models_tree):
    from performer_pkg.models.backbones import loaders as backbones

    return backbones.load_svd(models_tree[1]["svd_file"], device="cpu")


# ----------------------------------------------------------------------------- in the test host

def test_reference_unet_in_the_host(host, models_tree, tmp_path):
    """End to end in the test host: a ReferenceNet in the released key layout (diffusers names, no output layers) at
    the native test checkpoint's width in models/diffusion_models; CheckpointLoaderSimple → Load Reference UNet →
    Apply Causal Reference (reference_model) → KSampler over 3 frames: it runs, one reference pass, and the frames differ
    from the same workflow without the reference model; and the checkpoint's own UNet written as a denoising_unet.pth,
    loaded with Load Released UNet, gives exactly the checkpoint's video."""
    import numpy as np
    from PIL import Image

    from host import output_files, sd15_sampling_graph

    import comfy.sd

    root = models_tree[0]
    ckpt = os.path.join(root, tm.NATIVE_SD15_FILE)
    model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
    g = torch.Generator().manual_seed(3)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in diffusers_state(model).items()}
    os.makedirs(os.path.join(root, "diffusion_models"), exist_ok=True)
    # own names: the bundled Champ workflow's reference_unet.pth / denoising_unet.pth are real size (tiny_models.champ_models)
    torch.save(sd, os.path.join(root, "diffusion_models", "native320_reference_unet.pth"))
    torch.save(diffusers_state(model, drop_output=False), os.path.join(root, "diffusion_models", "native320_denoising_unet.pth"))
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
        os.path.join(host.workdir, "input", "performer_reference_unet_test.png"))

    def api(separate, denoising_file=False):
        out = sd15_sampling_graph(os.path.basename(tm.NATIVE_SD15_FILE), ["99", 0], f"refunet_{separate}_{denoising_file}",
                                  frames=3, text="a person dancing")
        out.update({
            "2": {"class_type": "LoadImage", "inputs": {"image": "performer_reference_unet_test.png"}},
            "4": {"class_type": "PerformerApplyCausalReference", "inputs": {
                "model": ["1", 0], "vae": ["1", 2], "reference": ["2", 0], "strength": 1.0, "uncond": "auto",
                "start_percent": 0.0, "end_percent": 1.0}},
            "99": {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["4", 0]}},
        })
        if denoising_file:  # the checkpoint's own UNet as a released denoising_unet.pth: the same video
            out["12"] = {"class_type": "PerformerLoadReferenceUNet", "inputs": {"model": ["1", 0], "unet": "native320_denoising_unet.pth",
                                                                                "role": "denoising"}}
            out["4"]["inputs"]["model"] = ["12", 0]
        if separate:
            out["3"] = {"class_type": "PerformerLoadReferenceUNet", "inputs": {"model": ["1", 0], "unet": "native320_reference_unet.pth",
                                                                               "role": "reference (ReferenceNet)"}}
            out["4"]["inputs"]["reference_model"] = ["3", 0]
        return out

    frames = []
    for separate, denoising_file in ((True, False), (False, False), (False, True)):
        res = host.run(api(separate, denoising_file), timeout=900)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        files = output_files(res)
        assert len(files) == 3
        frames.append([np.asarray(Image.open(__import__("io").BytesIO(host.view(f)))) for f in files])
        counts = host.get("/performer_test/alive")["counts"]["CausalReferencePatch"]
        assert counts["writes"] == counts["runs"] >= 1, counts
    assert any(not np.array_equal(a, b) for a, b in zip(frames[0], frames[1]))
    assert all(np.array_equal(a, b) for a, b in zip(frames[1], frames[2]))
