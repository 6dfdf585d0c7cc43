"""Released SD1.5 IP-Adapter files (plain, FaceID) read into the pack's identity adapter (models/attention/ip_adapter.py).

The key names and shapes of the released files are test data (tests/data/released_layouts/, each with its source:
tencent-ailab/IP-Adapter's own module definitions, docs/research/released_ip_adapter.md).  The target is the real
SD1.5 UNet's cross-attention layout (diffusers' ``UNet2DConditionModel`` from the pack's reference config, built on the
meta device).  The decoupled attention is checked against IP-Adapter's formula written out in the test.
"""
import json
import math
import os

import pytest
import torch

import tiny_models as tm

DATA = os.path.join(tm.HERE, "data", "released_layouts")


def released(name):
    with open(os.path.join(DATA, name + ".json")) as fh:
        d = json.load(fh)
    assert d["source"]
    return d["keys"]


def state_of(layout, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v, generator=g) for k, v in layout.items()}


@pytest.fixture(scope="module")
def sd15_layers():
    """Cross-attention layer name → (context width, layer width) of the real SD1.5 UNet (meta device)."""
    from diffusers import UNet2DConditionModel

    from performer_pkg.models.attention.identity import cross_attention_layers
    from performer_pkg.models.backbones.loaders import reference_config

    cfg = {k: v for k, v in reference_config("sd15_unet.json").items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    return {n: (a.to_k.in_features, a.to_k.out_features) for n, a in cross_attention_layers(unet).items()}


@pytest.mark.parametrize("name,kind", [("ip-adapter_sd15.safetensors", "img"), ("ip-adapter-faceid_sd15.bin", "face")])
def test_released_layout_loads_strictly_onto_every_sd15_cross_attention_layer(sd15_layers, name, kind, caplog):
    from performer_pkg.models.attention.identity import _key
    from performer_pkg.models.attention.identity import from_ip_adapter

    layout = released(name)
    state = state_of(layout)
    ad = from_ip_adapter(state, name)
    assert ad.kinds == (kind,)
    assert {n: tuple(v) for n, v in ad.config["layers"].items()} == sd15_layers  # all 16, in and out widths
    # every released tensor is used (the FaceID LoRA is named in a warning instead), and lands where it belongs
    n_mid = 31  # N of the mid block's cross-attention: the last processor (down, up, then mid)
    assert torch.equal(ad.kv[_key("mid_block.attentions.0.transformer_blocks.0.attn2") + f"__k_{kind}"].weight,
                       state[f"ip_adapter.{n_mid}.to_k_ip.weight"])
    assert torch.equal(ad.kv[_key("up_blocks.1.attentions.0.transformer_blocks.0.attn2") + f"__v_{kind}"].weight,
                       state["ip_adapter.13.to_v_ip.weight"])
    used = {"img": 4 + 32, "face": 6 + 32}[kind]
    assert sum(p.numel() for p in ad.parameters()) == sum(math.prod(layout[k]) for k in layout if "_lora." not in k)
    assert len([k for k in layout if "_lora." not in k]) == used
    if kind == "face":
        assert "LoRA" in caplog.text and "ip-adapter-faceid_sd15_lora.safetensors" in caplog.text


def test_tokens_and_decoupled_attention_match_ip_adapters_formula():
    """Plain IP-Adapter: tokens = LayerNorm(reshape(W·e + b, 4 × 768)); FaceID: LayerNorm(reshape(W2·GELU(W1·id + b1) +
    b2)); each cross-attention: softmax(QKᵀ/√d)V + s·softmax(QK_ipᵀ/√d)V_ip per head, before to_out — written out here
    and compared with the pack's processor on a real-width SD1.5 layer (320 channels, 8 heads)."""
    from diffusers.models.attention_processor import Attention

    from performer_pkg.models.attention.identity import DecoupledCrossAttnProcessor
    from performer_pkg.models.attention.identity import from_ip_adapter

    torch.manual_seed(0)
    for name in ("ip-adapter_sd15.safetensors", "ip-adapter-faceid_sd15.bin"):
        state = state_of(released(name), seed=1, scale=0.05)
        ad = from_ip_adapter(state, name)
        e = torch.randn(1, 1024 if "faceid" not in name else 512)
        if "faceid" in name:
            h = torch.nn.functional.gelu(e @ state["image_proj.proj.0.weight"].T + state["image_proj.proj.0.bias"])
            raw = h @ state["image_proj.proj.2.weight"].T + state["image_proj.proj.2.bias"]
            tok = ad.tokens(None, e)
        else:
            raw = e @ state["image_proj.proj.weight"].T + state["image_proj.proj.bias"]
            tok = ad.tokens(e, None)
        want = torch.nn.functional.layer_norm(raw.view(1, 4, 768), (768,), state["image_proj.norm.weight"],
                                              state["image_proj.norm.bias"])
        assert torch.allclose(tok, want, atol=1e-5)

        layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # N = 1
        attn = Attention(320, cross_attention_dim=768, heads=8, dim_head=40).eval()
        x, text = torch.randn(2, 64, 320), torch.randn(2, 77, 768)
        ctx = torch.cat([text, tok.expand(2, -1, -1)], 1)
        scale = 0.7
        kind = "face" if "faceid" in name else "image"
        proc = DecoupledCrossAttnProcessor(layer, ad, {kind: scale})
        with torch.no_grad():
            got = proc(attn, x, ctx)

            def heads(t):
                return t.view(t.shape[0], t.shape[1], 8, 40).transpose(1, 2)

            def att(q, k, v):
                w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(40), -1)
                return (w @ heads(v)).transpose(1, 2).reshape(q.shape[0], q.shape[1], 320)

            q = attn.to_q(x)
            k_ip = tok.expand(2, -1, -1) @ state["ip_adapter.1.to_k_ip.weight"].T
            v_ip = tok.expand(2, -1, -1) @ state["ip_adapter.1.to_v_ip.weight"].T
            mixed = att(q, attn.to_k(text), attn.to_v(text)) + scale * att(q, k_ip, v_ip)
            want = attn.to_out[1](attn.to_out[0](mixed))
        assert (got - want).abs().max() < 1e-5, name


def test_wrong_files_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from performer_pkg.models.attention.identity import load_identity_adapter
    from performer_pkg.models.errors import BadModelFileError

    plain = state_of(released("ip-adapter_sd15.safetensors"))
    ok = tmp_path / "ip-adapter_sd15.safetensors"
    save_file({k: v.half() for k, v in plain.items()}, str(ok))
    assert load_identity_adapter(str(ok)).kinds == ("img",)  # the file as users have it (fp16)

    plus = dict(plain)
    plus["image_proj.latents"] = torch.zeros(1, 16, 768)
    bad = tmp_path / "ip-adapter-plus-face_sd15.safetensors"
    save_file(plus, str(bad))
    with pytest.raises(BadModelFileError, match=r"ip-adapter-plus-face_sd15.*plus / plus-face resampler without.*proj_in"):
        load_identity_adapter(str(bad))
    plus = state_of(released("ip-adapter-plus_sd15.safetensors"))
    plus["image_proj.layers.2.0.to_kv.weight"] = torch.zeros(1024, 768)
    bad = tmp_path / "ip-adapter-plus_cut.safetensors"
    save_file(plus, str(bad))
    with pytest.raises(BadModelFileError, match=r"(?s)ip-adapter-plus_cut.*do not fit.*to_kv"):
        load_identity_adapter(str(bad))

    sdxl = {k: (torch.zeros(v.shape[0], 2048) if ".to_" in k and "_ip." in k else v) for k, v in plain.items()}
    bad = tmp_path / "ip-adapter_sdxl.safetensors"
    save_file(sdxl, str(bad))
    with pytest.raises(BadModelFileError, match=r"ip-adapter_sdxl.*SD1.5.*needs \(320, 768\)"):
        load_identity_adapter(str(bad))

    more = dict(plain)
    more["ip_adapter.0.to_q_lora.down.weight"] = torch.zeros(128, 320)  # FaceID's LoRA in a plain file
    bad = tmp_path / "ip-adapter_mixed.safetensors"
    save_file(more, str(bad))
    with pytest.raises(BadModelFileError, match=r"ip-adapter_mixed.*does not have.*to_q_lora.*only in part"):
        load_identity_adapter(str(bad))

    other = tmp_path / "pose_guider.safetensors"  # another model's checkpoint
    save_file({"conv_in.weight": torch.zeros(16, 3, 3, 3)}, str(other))
    with pytest.raises(BadModelFileError, match=r"pose_guider.*neither a Performer identity adapter.*nor an IP-Adapter"):
        load_identity_adapter(str(other))

    trunc = tmp_path / "ip-adapter_trunc.safetensors"
    trunc.write_bytes(ok.read_bytes()[: 4096])
    with pytest.raises(BadModelFileError, match="ip-adapter_trunc"):
        load_identity_adapter(str(trunc))

    evil = tm.evil_checkpoint(tmp_path / "ip-adapter-faceid_sd15.bin", "ip_adapter", nested=True)
    with pytest.raises(BadModelFileError, match=r"(?s)ip-adapter-faceid_sd15\.bin.*pickled code is refused"):
        load_identity_adapter(str(evil))

    face = {}
    for k, v in state_of(released("ip-adapter-faceid_sd15.bin")).items():
        outer, inner = k.split(".", 1)
        face.setdefault(outer, {})[inner] = v.half()
    good = tmp_path / "faceid_ok.bin"
    torch.save(face, str(good))  # the released .bin: a nested {image_proj: {...}, ip_adapter: {...}} of tensors
    assert load_identity_adapter(str(good)).kinds == ("face",)


def test_faceid_file_drives_apply_identity_on_a_real_size_sd15_checkpoint_in_the_host(host, models_tree):
    """End to end in the test host: the FaceID file (the released nested .bin, key layout and shapes as released,
    random weights) in models/ipadapter, core's CheckpointLoaderSimple on a real-size SD1.5 checkpoint (random, the
    AnimateDiff-Evolved test files), Apply Identity with the reference photo through the ArcFace model, core KSampler:
    the run succeeds and differs from the same graph without Apply Identity."""
    import numpy as np
    from PIL import Image

    from host import ADE_DIR, ADE_MISSING, output_files, sd15_sampling_graph

    if not os.path.isdir(ADE_DIR):
        pytest.skip(ADE_MISSING + "; the real-size SD1.5 test checkpoint is written with the ADE files")
    root = models_tree[0]
    os.makedirs(os.path.join(root, "ipadapter"), exist_ok=True)
    face = {}
    for k, v in state_of(released("ip-adapter-faceid_sd15.bin"), seed=3, scale=0.05).items():
        outer, inner = k.split(".", 1)
        face.setdefault(outer, {})[inner] = v.half()
    torch.save(face, os.path.join(root, "ipadapter", "ip-adapter-faceid_sd15.bin"))

    def api(identity):
        g = sd15_sampling_graph(os.path.basename(tm.ADE_SD15_FILE), ["3", 0] if identity else ["1", 0], f"faceid_{identity}")
        g["2"] = {"class_type": "LoadImage", "inputs": {"image": "performer_reference.png"}}
        if identity:
            g["3"] = {"class_type": "PerformerApplyIdentity", "inputs": {
                "model": ["1", 0], "identity_adapter": "ip-adapter-faceid_sd15.bin", "arcface": "tiny_arcface.onnx",
                "image_scale": 0.0, "face_scale": 1.0, "start_percent": 0.0, "end_percent": 1.0, "face_image": ["2", 0]}}
        return g

    frames = []
    for identity in (True, False):
        res = host.run(api(identity), timeout=900)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        frames.append(np.asarray(Image.open(__import__("io").BytesIO(host.view(output_files(res)[0])))))
    assert not np.array_equal(frames[0], frames[1])


# ----------------------------------------------------------------------------- IP-Adapter plus / plus-face (resampler)

def resampler_written_out(state, x, heads=12, d=64):
    """IP-Adapter plus's Resampler, as docs/research/released_ip_adapter.md §4.2 describes it, in functional ops."""
    import torch.nn.functional as F

    w = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    lat = w["latents"].expand(x.shape[0], -1, -1)
    x = F.linear(x, w["proj_in.weight"], w["proj_in.bias"])
    for i in range(4):
        p = f"layers.{i}."
        xn = F.layer_norm(x, (768,), w[p + "0.norm1.weight"], w[p + "0.norm1.bias"])
        ln = F.layer_norm(lat, (768,), w[p + "0.norm2.weight"], w[p + "0.norm2.bias"])
        q = F.linear(ln, w[p + "0.to_q.weight"])
        kv = F.linear(torch.cat([xn, ln], 1), w[p + "0.to_kv.weight"])
        k, v = kv[..., :768], kv[..., 768:]
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
        s = d ** -0.25
        a = torch.softmax((split(q) * s) @ (split(k) * s).transpose(-1, -2), -1) @ split(v)
        lat = F.linear(a.transpose(1, 2).reshape(lat.shape), w[p + "0.to_out.weight"]) + lat
        h = F.layer_norm(lat, (768,), w[p + "1.0.weight"], w[p + "1.0.bias"])
        lat = F.linear(F.gelu(F.linear(h, w[p + "1.1.weight"])), w[p + "1.3.weight"]) + lat
    return F.layer_norm(F.linear(lat, w["proj_out.weight"], w["proj_out.bias"]), (768,), w["norm_out.weight"],
                        w["norm_out.bias"])


def test_plus_layout_loads_strictly_and_its_tokens_are_the_resampler_written_out(sd15_layers):
    from performer_pkg.models.attention.identity import _key, from_ip_adapter

    layout = released("ip-adapter-plus_sd15.safetensors")
    image_proj = {k: v for k, v in layout.items() if k.startswith("image_proj.")}
    assert len(image_proj) == 51 and sum(math.prod(v) for v in image_proj.values()) == 29_918_208  # as research records
    state = state_of(layout, seed=5, scale=0.05)
    ad = from_ip_adapter(state, "ip-adapter-plus_sd15.safetensors")
    assert ad.kinds == ("img",) and ad.reads_hidden_states and ad.config["num_image_tokens"] == 16
    assert {n: tuple(v) for n, v in ad.config["layers"].items()} == sd15_layers
    assert {k: list(v.shape) for k, v in ad.image_proj.state_dict().items()} == \
        {k[len("image_proj."):]: v for k, v in image_proj.items()}  # the resampler holds exactly the file's tensors
    assert torch.equal(ad.kv[_key("mid_block.attentions.0.transformer_blocks.0.attn2") + "__k_img"].weight,
                       state["ip_adapter.31.to_k_ip.weight"])
    x = torch.randn(2, 257, 1280, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ad.tokens(x, None)
    want = resampler_written_out(state, x)
    assert got.shape == (2, 16, 768) and (got - want).abs().max() < 1e-4
    from performer_pkg.models.errors import BadInputError

    with pytest.raises(BadInputError, match="penultimate hidden states"):
        ad.tokens(torch.randn(1, 1024), None)  # a projected embedding, as the plain file reads


def test_plus_is_refused_by_the_pipe_with_the_native_node_named(ad, tmp_path):
    from safetensors.torch import save_file

    from performer_pkg.models.backbones.loaders import with_identity_adapter
    from performer_pkg.models.errors import BadInputError

    path = tmp_path / "ip-adapter-plus-face_sd15.safetensors"
    save_file({k: v.half() for k, v in state_of(released("ip-adapter-plus_sd15.safetensors")).items()}, str(path))
    with pytest.raises(BadInputError, match="plus-face_sd15.*Apply Identity \\(native\\)"):
        with_identity_adapter(ad, str(path))


@pytest.mark.parametrize("name,layout", [("ip-adapter-plus-face_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"),
                                         ("ip-adapter_sd15.safetensors", "ip-adapter_sd15.safetensors")])
def test_plus_face_and_plain_files_drive_apply_identity_on_a_real_size_sd15_checkpoint_in_the_host(host, models_tree, name,
                                                                                                  layout, request):
    """End to end in the test host: the plus-face (or plain) file (the released layout, random weights) in models/ipadapter, core's
    CheckpointLoaderSimple on a real-size SD1.5 checkpoint, core's CLIPVisionEncode of the reference with core's own
    CLIP vision model (ViT-L, real size, random: the file's CLIP widths are ViT-L's), Apply Identity reading the
    penultimate hidden states (plus) or the projected embedding (plain), plus with the neutral image's tokens for the
    unconditional half: the run succeeds and differs from the same graph without Apply Identity; plus without
    clip_vision stops with the error naming it."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from host import ADE_DIR, ADE_MISSING, output_files, sd15_sampling_graph

    if not os.path.isdir(ADE_DIR):
        pytest.skip(ADE_MISSING + "; the real-size SD1.5 test checkpoint is written with the ADE files")
    request.getfixturevalue("released_files")  # core's CLIP ViT-L (tiny_models.champ_models)
    root = models_tree[0]
    os.makedirs(os.path.join(root, "ipadapter"), exist_ok=True)
    # the released layout at CLIP ViT-L's widths (hidden 1024, embedding 768) instead of ViT-H's (1280, 1024): the test
    # host's ViT-L is 0.3 B parameters where ViT-H would take the 4 GB SVD test file to load
    state = state_of(released(layout), seed=4, scale=0.05)
    if "image_proj.proj_in.weight" in state:
        state["image_proj.proj_in.weight"] = state["image_proj.proj_in.weight"][:, :1024].contiguous()
    if "image_proj.proj.weight" in state:
        state["image_proj.proj.weight"] = state["image_proj.proj.weight"][:, :768].contiguous()
    save_file({k: v.half() for k, v in state.items()}, os.path.join(root, "ipadapter", name))
    plus = "plus" in name

    def api(identity, with_model=True):
        g = sd15_sampling_graph(os.path.basename(tm.ADE_SD15_FILE), ["3", 0] if identity else ["1", 0], f"plus_{identity}")
        g.update({"2": {"class_type": "LoadImage", "inputs": {"image": "performer_reference.png"}},
                  "10": {"class_type": "CLIPVisionLoader",
                         "inputs": {"clip_name": os.path.basename(tm.CHAMP_FILES["clip_vision"])}},
                  "11": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["10", 0], "image": ["2", 0],
                                                                      "crop": "center"}}})
        if identity:
            g["3"] = {"class_type": "PerformerApplyIdentity", "inputs": {
                "model": ["1", 0], "identity_adapter": name, "arcface": "none",
                "image_scale": 1.0, "face_scale": 0.0, "start_percent": 0.0, "end_percent": 1.0,
                "clip_vision_output": ["11", 0]}}
            if with_model and plus:  # the plain file reads the projected embedding only
                g["3"]["inputs"]["clip_vision"] = ["10", 0]
        return g

    frames = []
    for identity in (True, False):
        res = host.run(api(identity), timeout=900)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        frames.append(np.asarray(Image.open(__import__("io").BytesIO(host.view(output_files(res)[0])))))
    assert not np.array_equal(frames[0], frames[1])
    if plus:
        res = host.run(api(True, with_model=False), timeout=900)
        assert res["status"] == "execution_error" and "connect the CLIP vision model (clip_vision)" in json.dumps(res["events"])


def test_an_all_zero_identity_adapter_is_named_in_a_warning(caplog):
    """An adapter whose key/value projections are all zeros adds nothing (its attention reads zero values): applying it
    logs a warning saying the identity guidance is ignored; a released file's adapter does not."""
    import logging

    from performer_pkg.models.attention.identity import from_ip_adapter, warn_if_silent

    ad = from_ip_adapter(state_of(released("ip-adapter_sd15.safetensors")), "ip-adapter_sd15.safetensors")
    with caplog.at_level(logging.WARNING):
        assert not warn_if_silent(ad, "released")
        with torch.no_grad():
            for m in ad.kv.values():
                m.weight.zero_()
        assert warn_if_silent(ad, "zeroed")
    assert "released" not in caplog.text and "zeroed: every key/value projection is all zeros" in caplog.text
