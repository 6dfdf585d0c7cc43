"""Champ's released guidance encoders (guidance_encoder_{depth,normal,semantic_map,dwpose}.pth) on core's MODEL, fed by
the pack's SMPL-X renders in Champ's conventions (models/guidance/pose_guider.py, models/body/render.py,
nodes/native_released.py, nodes/body.py).

Key names and shapes: tests/data/released_layouts/champ_guidance_encoder_X.pth.json (from Champ's own module definition,
docs/research/released_pose_models.md §1.2).  The forward is checked against the encoder written out here with
functional ops; the native patch on core's tiny SD1.5 model (a tiny-width encoder in the same key layout) and, end to
end in the test host, on a real-size SD1.5 checkpoint with the pack's renders.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm

tm.ensure_comfy_importable()

LAYOUT = os.path.join(tm.HERE, "data", "released_layouts", "champ_guidance_encoder_X.pth.json")


def layout():
    with open(LAYOUT) as fh:
        return json.load(fh)["keys"]


def champ_state(out_channels=320, widths=(16, 32, 96, 256), seed=0, scale=0.1):
    """Random tensors in Champ's key layout: at the real widths exactly the recorded list's shapes, otherwise the same
    keys at ``widths`` (a tiny instance)."""
    from performer_pkg.models.guidance.pose_guider import ChampGuidanceEncoder

    if tuple(widths) == (16, 32, 96, 256) and out_channels == 320:
        shapes = layout()
    else:
        with torch.device("meta"):
            shapes = {k: list(v.shape) for k, v in ChampGuidanceEncoder(out_channels, widths).state_dict().items()}
    g, out = torch.Generator().manual_seed(seed), {}
    for k, shape in shapes.items():
        out[k] = scale * torch.randn(shape, generator=g)
        if k.endswith(("norm.weight", "norm1.weight", "norm3.weight")):
            out[k] = 1 + out[k]
    return out


def reference_forward(w, x):
    """Champ's encoder forward written out: conv chain with SiLU, then the last level's spatial transformer
    (GroupNorm 32, ε 1e-6; 1×1 conv; LayerNorm → 8-head self-attention → residual; LayerNorm → GEGLU FF → residual;
    1×1 conv; + input), then conv_out."""
    h = F.silu(F.conv2d(x, w["conv_in.weight"], w["conv_in.bias"], padding=1))
    for i in range(6):
        h = F.silu(F.conv2d(h, w[f"blocks.{i}.weight"], w[f"blocks.{i}.bias"], padding=1, stride=2 if i % 2 else 1))
    p = "attentions.5."
    b, c, hh, ww = h.shape
    t = F.group_norm(h, 32, w[p + "norm.weight"], w[p + "norm.bias"], eps=1e-6)
    t = F.conv2d(t, w[p + "proj_in.weight"], w[p + "proj_in.bias"]).flatten(2).transpose(1, 2)  # (b, hw, c)
    q = p + "transformer_blocks.0."
    n = F.layer_norm(t, (c,), w[q + "norm1.weight"], w[q + "norm1.bias"])
    heads, d = 8, c // 8
    qq, kk, vv = (F.linear(n, w[q + f"attn1.to_{x_}.weight"]).reshape(b, -1, heads, d).permute(0, 2, 1, 3) for x_ in "qkv")
    a = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(d), -1) @ vv
    t = t + F.linear(a.permute(0, 2, 1, 3).reshape(b, -1, c), w[q + "attn1.to_out.0.weight"], w[q + "attn1.to_out.0.bias"])
    n = F.layer_norm(t, (c,), w[q + "norm3.weight"], w[q + "norm3.bias"])
    hid, gate = F.linear(n, w[q + "ff.net.0.proj.weight"], w[q + "ff.net.0.proj.bias"]).chunk(2, -1)
    t = t + F.linear(hid * F.gelu(gate), w[q + "ff.net.2.weight"], w[q + "ff.net.2.bias"])
    t = F.conv2d(t.transpose(1, 2).reshape(b, c, hh, ww), w[p + "proj_out.weight"], w[p + "proj_out.bias"])
    return F.conv2d(t + h, w["conv_out.weight"], w["conv_out.bias"], padding=1)


def test_released_layout_loads_strictly_on_meta_at_real_size():
    from performer_pkg.models.guidance.pose_guider import ChampGuidanceEncoder

    with torch.device("meta"):
        enc = ChampGuidanceEncoder()
    sd = {k: torch.empty(v, device="meta") for k, v in layout().items()}
    assert len(sd) == 149 and sum(math.prod(v) for v in layout().values()) == 3_833_136  # as docs/research records
    enc.load_state_dict(sd, strict=True, assign=True)
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == layout()


def test_forward_equals_the_encoder_written_out_and_the_loader_reads_full_or_used_only_files(tmp_path):
    from performer_pkg.models.guidance.pose_guider import load_champ_guidance_encoder

    sd = champ_state()
    assert {k: list(v.shape) for k, v in sd.items()} == layout()
    torch.save({k: v.half() for k, v in sd.items()}, str(tmp_path / "guidance_encoder_depth.pth"))
    enc = load_champ_guidance_encoder(str(tmp_path / "guidance_encoder_depth.pth"))
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    w = {k: v.half().float() for k, v in sd.items()}
    with torch.no_grad():
        got = enc(x)
    want = reference_forward(w, x)
    assert got.shape == (2, 320, 8, 6) and (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    # the parts Champ's forward never runs change nothing; a file without them loads (Champ reads strict=False)
    used = {k: v for k, v in sd.items() if k.startswith(("conv_", "blocks.", "attentions.5."))}
    torch.save(used, str(tmp_path / "used_only.pth"))
    with torch.no_grad():
        got = load_champ_guidance_encoder(str(tmp_path / "used_only.pth"))(x)
    want = reference_forward(used, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_wrong_files_are_refused_naming_the_file(tmp_path):
    from performer_pkg.models.errors import BadModelFileError
    from performer_pkg.models.guidance.pose_guider import load_champ_guidance_encoder, load_released_pose_guider

    sd = champ_state(widths=(16, 32, 32, 64), out_channels=32)
    torch.save({k: v for k, v in sd.items() if not k.startswith("attentions.")}, str(tmp_path / "pose_guider.pth"))
    with pytest.raises(BadModelFileError, match=r"pose_guider\.pth is not a Champ guidance encoder.*Apply Pose Guider"):
        load_champ_guidance_encoder(str(tmp_path / "pose_guider.pth"))
    torch.save(sd, str(tmp_path / "guidance_encoder_normal.pth"))
    with pytest.raises(BadModelFileError, match=r"guidance_encoder_normal\.pth is a Champ guidance encoder.*Apply Champ"):
        load_released_pose_guider(str(tmp_path / "guidance_encoder_normal.pth"))
    bad = {**sd, "attentions.5.proj_in.weight": torch.zeros(64, 64, 3, 3)}
    torch.save(bad, str(tmp_path / "shape.pth"))
    with pytest.raises(BadModelFileError, match=r"shape\.pth does not have the Champ guidance encoder's layout"):
        load_champ_guidance_encoder(str(tmp_path / "shape.pth"))
    torch.save({k: v for k, v in sd.items() if k != "attentions.5.norm.bias"}, str(tmp_path / "missing.pth"))
    with pytest.raises(BadModelFileError, match=r"missing\.pth does not have.*attentions\.5\.norm\.bias"):
        load_champ_guidance_encoder(str(tmp_path / "missing.pth"))
    raw = open(tmp_path / "guidance_encoder_normal.pth", "rb").read()
    open(tmp_path / "truncated.pth", "wb").write(raw[: len(raw) // 2])
    with pytest.raises(BadModelFileError, match=r"truncated\.pth"):
        load_champ_guidance_encoder(str(tmp_path / "truncated.pth"))

    tm.evil_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(BadModelFileError, match=r"(?s)evil\.pth.*pickled code is refused"):
        load_champ_guidance_encoder(str(tmp_path / "evil.pth"))


def _tiny_encoder(tmp_path, name, seed):
    from performer_pkg.models.guidance.pose_guider import load_champ_guidance_encoder

    torch.save(champ_state(out_channels=32, widths=(16, 32, 32, 64), seed=seed, scale=0.3), str(tmp_path / name))
    return load_champ_guidance_encoder(str(tmp_path / name))


def test_native_guidance_sums_the_encoders_after_conv_in_in_both_halves(tmp_path):
    from test_released_pose_guider import _sample

    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native_released import _Run, apply_champ_guidance, apply_released_pose_guider

    model = tm.core_sd15_patcher()
    before = repr(model.model_options)
    depth, normal = _tiny_encoder(tmp_path, "d.pth", 1), _tiny_encoder(tmp_path, "n.pth", 2)
    g = torch.Generator().manual_seed(5)
    d_img, n_img = torch.rand(3, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    base = _sample(model)
    m0, p0 = apply_champ_guidance(model, [(depth, d_img, "depth"), (normal, n_img, "normal")], 0.0)
    assert torch.equal(_sample(m0), base) and p0.last_calls == []
    m1, p1 = apply_champ_guidance(model, [(depth, d_img, "depth"), (normal, n_img, "normal")], 1.0)
    assert (_sample(m1) - base).abs().max() > 1e-3 and p1.runs == 1 and p1.last_calls == [[0, 1, 2]] * 2
    assert torch.equal(_sample(model), base) and repr(model.model_options) == before  # the original untouched
    feats = p1.features(3, 8, 8, "cpu")
    with torch.no_grad():
        want = depth(d_img.permute(0, 3, 1, 2)) + normal(n_img.permute(0, 3, 1, 2))
    assert torch.allclose(feats, want, atol=1e-5)
    p1.run = _Run(feats, None)
    h = torch.zeros(6, 32, 8, 8)
    assert torch.equal(p1.input_block_patch(h, {"block": ("input", 0), "cond_or_uncond": [1, 0]}), feats.repeat(2, 1, 1, 1))
    p1.run = None
    with pytest.raises(BadInputError, match="connect at least one guidance"):
        apply_champ_guidance(model, [])
    with pytest.raises(BadInputError, match="already has a released pose encoder"):
        apply_released_pose_guider(m1, depth, d_img)
    short, _ = apply_champ_guidance(model, [(depth, d_img[:2], "depth")])
    with pytest.raises(Exception, match="depth has 2 frames but 3 frames are sampled"):
        _sample(short)


def test_champ_render_conventions():
    from performer_pkg.models.body.render import CHAMP_SEMANTIC_COLOURS, champ_depth, champ_part_labels

    # viridis(10·i) as Champ's palette (docs/research §1.4): its first, middle and last entries
    assert CHAMP_SEMANTIC_COLOURS.shape == (24, 3)
    assert CHAMP_SEMANTIC_COLOURS[0].tolist() == [68, 1, 84] and CHAMP_SEMANTIC_COLOURS[15].tolist() == [33, 165, 133]
    assert CHAMP_SEMANTIC_COLOURS[23].tolist() == [189, 223, 38]
    w = np.zeros((7, 55))
    for v, j in enumerate([0, 21, 22, 24, 25, 39, 54]):  # pelvis, right wrist, jaw, right eye, fingers left / right
        w[v, j] = 1
    assert champ_part_labels(w).tolist() == [0, 21, 15, 15, 22, 22, 23]
    d = np.array([[0.0, 2.0], [3.0, 4.0]], np.float32)
    assert champ_depth(d).tolist() == [[0.0, 1.0], [0.5, 0.0]]  # nearest 1, farthest 0, background 0
    assert champ_depth(np.zeros((2, 2))).max() == 0


def test_champ_guidance_from_the_packs_renders_in_the_host(host, models_tree):
    """End to end in the test host: four tiny-width encoders in Champ's key layout (320-channel output) in
    models/performer/adapters; Load Pose → Fit Body → Render Body for Champ (depth, normal, semantic map) and Draw
    Skeleton Maps (dwpose) → Apply Champ Guidance on a real-size SD1.5 checkpoint → KSampler over 3 frames. It runs, the
    encoders read every frame, the semantic maps use Champ's palette, and the frames differ from strength 0's."""
    from PIL import Image

    from host import ADE_DIR, ADE_MISSING, output_files, sd15_sampling_graph

    if not os.path.isdir(ADE_DIR):
        pytest.skip(ADE_MISSING + "; the real-size SD1.5 test checkpoint is written with the ADE files")
    root = models_tree[0]
    for i, kind in enumerate(("depth", "normal", "semantic_map", "dwpose")):
        torch.save({k: v.half() for k, v in champ_state(widths=(16, 32, 32, 64), seed=10 + i, scale=0.05).items()},
                   os.path.join(root, "performer", "adapters", f"guidance_encoder_{kind}.pth"))

    def api(strength):
        g = sd15_sampling_graph(os.path.basename(tm.ADE_SD15_FILE), ["99", 0], f"champ_{strength}", frames=3,
                                text="a person dancing")
        g.update({
            "2": {"class_type": "PerformerLoadPose", "inputs": {"file": "performer_driving_pose.json"}},
            "12": {"class_type": "PerformerPoseFrames", "inputs": {"pose": ["2", 0], "start": 0, "length": 3, "multiple": "any"}},
            "13": {"class_type": "PerformerFitBody", "inputs": {"pose": ["12", 0], "body_model": "embedded (procedural stand-in, not SMPL-X)",
                                                                "iterations": 5, "fov": 40.0, "person": 0}},
            "14": {"class_type": "PerformerChampMaps", "inputs": {"body": ["13", 0], "width": 64, "height": 64}},
            "3": {"class_type": "PerformerDrawPose", "inputs": {"pose": ["12", 0], "width": 64, "height": 64, "body": True,
                                                                "hands": True, "face": True, "stick_width": 2}},
            "4": {"class_type": "PerformerApplyChampGuidance", "inputs": {
                "model": ["1", 0], "depth_encoder": "guidance_encoder_depth.pth", "depth": ["14", 0],
                "normal_encoder": "guidance_encoder_normal.pth", "normal": ["14", 1],
                "semantic_map_encoder": "guidance_encoder_semantic_map.pth", "semantic_map": ["14", 2],
                "dwpose_encoder": "guidance_encoder_dwpose.pth", "dwpose": ["3", 0],
                "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
            "99": {"class_type": "TestProbePerformerPatches", "inputs": {"model": ["4", 0]}},
            "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 2], "filename_prefix": f"performer/champ_sem_{strength}"}},
        })
        return g

    frames = []
    for strength in (1.0, 0.0):
        res = host.run(api(strength), timeout=900)
        assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
        files = output_files(res)
        out = [np.asarray(Image.open(__import__("io").BytesIO(host.view(f)))) for f in files if "champ_sem" not in f["filename"]]
        sem = [np.asarray(Image.open(__import__("io").BytesIO(host.view(f)))) for f in files if "champ_sem" in f["filename"]]
        assert len(out) == 3 and len(sem) == 3
        frames.append(out)
        if strength:
            counts = host.get("/performer_test/alive")["counts"]["ReleasedPoseGuiderPatch"]
            assert counts["runs"] >= 1 and counts["last_calls"] == [[0, 1, 2]] * 2, counts
            px = sem[0].reshape(-1, 3)
            body = px[px.sum(1) > 0]
            assert len(body), "the semantic map shows no body"
            palette = {tuple(c) for c in __import__("performer_pkg.models.body.render", fromlist=["x"]).CHAMP_SEMANTIC_COLOURS.tolist()}
            assert sum(tuple(p) in palette for p in body.tolist()) > len(body) // 4  # palette colours (faces blend)
    assert any(not np.array_equal(a, b) for a, b in zip(*frames))


def test_clip_vision_conditioning_is_the_image_embedding_as_one_token_and_zeros():
    """AnimateAnyone / Champ / MusePose condition their UNet on the reference's CLIP ViT-L/14 image embedding as the one
    context token, and the unconditional half on zeros (docs/research/released_pose_models.md §1.1, §1.3)."""
    from types import SimpleNamespace

    from performer_pkg.models.errors import BadInputError
    from performer_pkg.nodes.native_released import clip_vision_conditioning

    emb = torch.randn(1, 768, generator=torch.Generator().manual_seed(2))
    pos, neg = clip_vision_conditioning(SimpleNamespace(image_embeds=emb))
    assert pos[0][0].shape == (1, 1, 768) and torch.equal(pos[0][0][0, 0], emb[0])
    assert torch.equal(neg[0][0], torch.zeros(1, 1, 768))
    with pytest.raises(BadInputError, match="1024-wide.*ViT-L/14's 768-wide"):
        clip_vision_conditioning(SimpleNamespace(image_embeds=torch.randn(1, 1024)))
    with pytest.raises(BadInputError, match="no projected image embedding"):
        clip_vision_conditioning(SimpleNamespace(image_embeds=None))
