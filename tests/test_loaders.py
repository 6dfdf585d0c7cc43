"""Loaders read the single-file and diffusers layouts of every supported family.

Single files are written by ComfyUI's own model classes (tiny_models.py), so each check compares
our diffusers modules against ComfyUI's forward pass on the same weights: a wrong key mapping or
a wrong inferred architecture changes the numbers."""
import os

import pytest
import torch

import tiny_models as tm
from performer_pkg.models.backbones import loaders as backbones
from performer_pkg.models.errors import BadModelFileError, MissingModelError
from performer_pkg.models.backbones.weights import find_weight, read_state_dict

TOK = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]


def close(a, b, rel=2e-3):
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item() + 1e-6
    assert err <= rel * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


@torch.no_grad()
def test_sd15_single_file_and_diffusers_folder(models_tree):
    _, P = models_tree
    single = backbones.load_sd15(P["sd15_file"], device="cpu", tokenizer_dirs=TOK)
    folder = backbones.load_sd15(P["sd15_dir"], device="cpu")
    assert single.family == folder.family == "sd15"
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10.0, 500.0]), torch.randn(2, 5, 32, generator=g)
    ref = tm.comfy_sd15_unet()(x, t, context=ctx)
    close(single.unet(x, t, encoder_hidden_states=ctx).sample, ref)
    close(folder.unet(x, t, encoder_hidden_states=ctx).sample, ref)
    z = torch.randn(1, 4, 8, 8, generator=g)
    close(single.vae.decode(z).sample, tm.comfy_sd15_vae().decode(z))
    ids = single.tokenizer(["a person dancing"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0].item() == 49406
    close(single.text_encoder(ids)[0], tm.hf_text_encoder()(ids)[0])
    close(folder.text_encoder(ids)[0], tm.hf_text_encoder()(ids)[0])


def _vit_reference(sd, pixels):
    """open_clip ViT forward written directly on the open_clip tensors (independent of the converter)."""
    d = sd["conv1.weight"].shape[0]
    x = torch.nn.functional.conv2d(pixels, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, d), x], 1) + sd["positional_embedding"]
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (d,), sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    x = ln(x, "ln_pre")
    heads = max(1, d // 80)
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"transformer.resblocks.{i}."
        h = ln(x, b + "ln_1")
        q, k, v = (h @ sd[b + "attn.in_proj_weight"].t() + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
        sp = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.softmax(sp(q) @ sp(k).transpose(-1, -2) / (d // heads) ** 0.5, -1) @ sp(v)
        x = x + a.transpose(1, 2).reshape(x.shape) @ sd[b + "attn.out_proj.weight"].t() + sd[b + "attn.out_proj.bias"]
        h = ln(x, b + "ln_2") @ sd[b + "mlp.c_fc.weight"].t() + sd[b + "mlp.c_fc.bias"]
        x = x + torch.nn.functional.gelu(h) @ sd[b + "mlp.c_proj.weight"].t() + sd[b + "mlp.c_proj.bias"]
        i += 1
    return ln(x[:, 0], "ln_post") @ sd["proj"]


@torch.no_grad()
def test_svd_single_file_and_diffusers_folder(models_tree):
    _, P = models_tree
    single = backbones.load_svd(P["svd_file"], device="cpu")
    folder = backbones.load_svd(P["svd_dir"], device="cpu")
    assert single.family == folder.family == "svd"
    F = 3
    g = torch.Generator().manual_seed(1)
    x, ctx, added = torch.randn(F, 8, 16, 16, generator=g), torch.randn(1, 1, 32, generator=g), torch.randn(1, 3, generator=g)
    t = torch.full((F,), 0.7)
    y = single.unet.add_time_proj(added.flatten()).reshape(1, -1)
    ref = tm.comfy_svd_unet()(x, t, context=ctx.repeat(F, 1, 1), y=y.repeat(F, 1), num_video_frames=F,
                              image_only_indicator=torch.zeros(1, F))
    close(single.unet(x[None], t[:1], ctx, added_time_ids=added).sample[0], ref)
    close(folder.unet(x[None], t[:1], ctx, added_time_ids=added).sample[0], ref)
    z = torch.randn(F, 4, 8, 8, generator=g)
    vref = tm.comfy_svd_vae().decode(z)  # ComfyUI treats the batch as the frames
    close(single.vae.decode(z, num_frames=F).sample, vref)
    close(folder.vae.decode(z, num_frames=F).sample, vref)
    pixels = torch.randn(2, 3, 224, 224, generator=g)
    eref = _vit_reference(tm.open_clip_visual_state(), pixels)
    close(single.image_encoder(pixel_values=pixels).image_embeds, eref)
    close(folder.image_encoder(pixel_values=pixels).image_embeds, eref)


@torch.no_grad()
def test_motion_module_file_and_folder(models_tree):
    _, P = models_tree
    a = backbones.load_motion_adapter(P["mm_file"], device="cpu").state_dict()
    b = backbones.load_motion_adapter(P["mm_dir"], device="cpu").state_dict()
    orig = tm.motion_module_original_state()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every weight of the original file landed somewhere, unchanged (position tables, pos_encoder.pe in the original
    # files and pos_embed.pe in diffusers, are recomputed)
    assert sum(1 for k in orig if "pos_encoder" not in k) == sum(1 for k in a if ".pos_embed." not in k)
    q = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight"
    assert torch.equal(a["down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"], orig[q])


@torch.no_grad()
def test_controlnet_file_and_folder(models_tree):
    _, P = models_tree
    single = backbones.load_controlnet(P["cn_file"], device="cpu")
    folder = backbones.load_controlnet(P["cn_dir"], device="cpu")
    g = torch.Generator().manual_seed(2)
    x, t, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([300.0]), torch.randn(1, 5, 32, generator=g)
    hint = torch.rand(1, 3, 128, 128, generator=g)
    ref = tm.comfy_controlnet()(x, hint, t, ctx)
    ref_list = ref["output"] + ref["middle"]  # ComfyUI: per input block, in order, then the middle block
    for cn in (single, folder):
        down, mid = cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        outs = list(down) + [mid]
        assert len(outs) == len(ref_list)
        for o, r in zip(outs, ref_list):
            close(o, r)


def _fingerprint(bb):
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(bb.unet.state_dict().items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    return type(bb.unet).__name__, h.hexdigest(), bb.motion_adapter, bb.controlnet, dict(bb.source)


def test_adding_parts_returns_new_pipe_and_leaves_input_untouched(models_tree):
    _, P = models_tree
    base = backbones.load_sd15(P["sd15_file"], device="cpu", tokenizer_dirs=TOK)
    before = _fingerprint(base)
    moving = backbones.with_motion_module(base, P["mm_file"])
    both = backbones.with_controlnet(moving, P["cn_file"])
    assert _fingerprint(base) == before
    assert type(moving.unet).__name__ == "UNetMotionModel" and moving.motion_adapter is not None
    assert both.controlnet is not None and moving.controlnet is None
    with pytest.raises(Exception, match="already has a motion module"):
        backbones.with_motion_module(moving, P["mm_file"])
    svd = backbones.load_svd(P["svd_dir"], device="cpu")
    with pytest.raises(Exception, match="Motion modules work with SD1.5 pipes"):
        backbones.with_motion_module(svd, P["mm_file"])
    with pytest.raises(Exception, match="SD1.5 ControlNets"):
        backbones.with_controlnet(svd, P["cn_file"])


def test_missing_weight_names_folder_and_files(tmp_path):
    with pytest.raises(MissingModelError) as e:
        find_weight("performer_pose", ["dw-ll_ucoco_384.onnx", "dw-ll_ucoco_384_bs5.torchscript.pt"], [str(tmp_path)])
    msg = str(e.value)
    assert "performer_pose" in msg and str(tmp_path) in msg
    assert "dw-ll_ucoco_384.onnx" in msg and "dw-ll_ucoco_384_bs5.torchscript.pt" in msg


def test_bad_files_are_refused(tmp_path, models_tree):
    _, P = models_tree
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(BadModelFileError, match="broken.safetensors"):
        read_state_dict(str(corrupt))
    pickled = tmp_path / "evil.ckpt"

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    pickled.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(BadModelFileError, match="pickled code is refused"):
        read_state_dict(str(pickled))
    with pytest.raises(BadModelFileError, match="not SD1.5"):
        backbones.load_sd15(P["svd_file"], device="cpu", tokenizer_dirs=TOK)
    with pytest.raises(BadModelFileError, match="not Stable Video Diffusion"):
        backbones.load_svd(P["sd15_file"], device="cpu")
    with pytest.raises(MissingModelError, match="vocab.json"):
        backbones.load_sd15(P["sd15_file"], device="cpu", tokenizer_dirs=[str(tmp_path)])


def test_auto_family(models_tree):
    _, P = models_tree
    assert backbones.load_backbone(P["svd_dir"], device="cpu").family == "svd"
    assert backbones.load_backbone(P["sd15_file"], device="cpu", tokenizer_dirs=TOK).family == "sd15"


def test_dtype_selection():
    assert backbones.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert backbones.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError):
        backbones.resolve_dtype("fp8", torch.device("cpu"))
