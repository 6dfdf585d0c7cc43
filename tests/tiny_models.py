"""Tiny *real* model files in the on-disk layouts users have, for tests and the demo.

The original single-file layouts are produced by ComfyUI's own model classes (the test host's
ComfyUI 0.3.75): their ``state_dict()`` names *are* the LDM / sgm / ControlNet names that real
``.safetensors`` files carry, so our loaders are checked against a layout we did not write.
Diffusers folders are written with ``save_pretrained``; AnimateDiff motion modules are written in
the original ``mm_sd_v15_v2`` naming (diffusers' own converter reads them back).

Everything is seeded: ``build_models_tree(root)`` gives the same bytes every time.

Needs ComfyUI importable (``sys.path`` holding the host's ComfyUI tree); see ``tests/host.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Dict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMFY_DIR = os.path.join(REPO, ".host", "ComfyUI")

# Tiny architecture settings.  Head counts follow the rules the loaders use for real models
# (SD1.5: 8 heads; SVD UNet: 64-d heads; ViT: 80-d heads, at least one).
SD15 = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, context_dim=32, num_heads=8)
SVD = dict(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, context_dim=32, adm_in_channels=96)
VAE = dict(ch=32, ch_mult=[1, 2], num_res_blocks=2, z_channels=4)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1, vocab_size=49408,
            max_position_embeddings=77, hidden_act="quick_gelu")
VISION = dict(hidden=32, layers=2, patch=14, image_size=224, proj=32)


def ensure_comfy_importable(extra_args=()) -> None:
    """Put the test host's ComfyUI on sys.path and parse its command line once (``--cpu`` + ``extra_args``, e.g.
    ``--use-pytorch-cross-attention``; only the first call's arguments count)."""
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    import comfy.options

    if not getattr(ensure_comfy_importable, "_done", False):
        argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", *extra_args]
        try:
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses --cpu once)
        finally:
            sys.argv = argv
        ensure_comfy_importable._done = True


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and ("norm" in name or name.endswith(("ln_1.weight", "ln_2.weight"))) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module.eval()


class _CodeOnLoad:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def evil_checkpoint(path, key: str = "conv_out.weight", nested: bool = False) -> str:
    """A .pth whose unpickling would run code (under ``key``; ``nested``: inside ``{"image_proj": …, key: …}``)."""
    state = {"image_proj": {"x": torch.zeros(1)}, key: _CodeOnLoad()} if nested else {key: _CodeOnLoad()}
    torch.save(state, str(path))
    return str(path)


def _save(sd: Dict[str, torch.Tensor], path: str) -> str:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


# ----------------------------------------------------------------------------- ComfyUI-made originals


def sd15_unet_args(width_mult: int = 1) -> dict:
    """Core ``UNetModel`` arguments of the tiny SD1.5 UNet (``width_mult`` × its channels)."""
    return dict(image_size=32, in_channels=4, out_channels=4, model_channels=SD15["model_channels"] * width_mult,
                num_res_blocks=SD15["num_res_blocks"], channel_mult=SD15["channel_mult"], use_spatial_transformer=True,
                transformer_depth=[1, 0], transformer_depth_output=[1, 1, 0, 0], transformer_depth_middle=1,
                context_dim=SD15["context_dim"], num_heads=SD15["num_heads"], legacy=False, use_linear_in_transformer=False)


def svd_unet_args(adm_in_channels: int = SVD["adm_in_channels"]) -> dict:
    """Core ``UNetModel`` arguments of the tiny SVD UNet (ADM width: diffusers' 96 by default, core's own 768)."""
    return dict(image_size=32, in_channels=8, out_channels=4, model_channels=SVD["model_channels"],
                num_res_blocks=SVD["num_res_blocks"], channel_mult=SVD["channel_mult"], use_spatial_transformer=True,
                transformer_depth=[1, 0], transformer_depth_output=[1, 1, 0, 0], transformer_depth_middle=1,
                context_dim=SVD["context_dim"], adm_in_channels=adm_in_channels, num_classes="sequential",
                use_linear_in_transformer=True, num_heads=-1, num_head_channels=64, legacy=False, extra_ff_mix_layer=True,
                use_spatial_context=True, merge_strategy="learned_with_images", merge_factor=0.0,
                video_kernel_size=[3, 1, 1], use_temporal_resblock=True, use_temporal_attention=True,
                disable_temporal_crossattention=False, max_ddpm_temb_period=10000)


def comfy_sd15_unet(seed=1):
    ensure_comfy_importable()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return _randomise(UNetModel(**sd15_unet_args()), seed)


def comfy_svd_unet(seed=2):
    ensure_comfy_importable()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return _randomise(UNetModel(**svd_unet_args()), seed)


def _core_patcher(config_name: str, unet_args: dict, state_dict=None, seed: int = 0):
    """Core's own model class for ``comfy.supported_models.<config_name>`` built from ``unet_args`` on the CPU, in core's
    ``ModelPatcher``; UNet weights from ``state_dict``, else random (``seed``)."""
    ensure_comfy_importable()
    import comfy.model_patcher
    import comfy.supported_models

    mc = getattr(comfy.supported_models, config_name)(unet_args)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device=torch.device("cpu"))
    if state_dict is not None:
        model.diffusion_model.load_state_dict(state_dict)
    else:
        _randomise(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def core_sd15_patcher(width_mult: int = 1, seed: int = 1):
    """Core's own SD1.5 model (``comfy.model_base.BaseModel`` through the ``SD15`` config class, ε-prediction) at the
    tiny test width (``width_mult`` × channels, 8 heads), in core's ``ModelPatcher`` on the CPU.  At width 1 its UNet
    weights are the tiny single file's (``comfy_sd15_unet``).  Built directly because core's checkpoint detection
    refuses tiny widths (research/native.md); the classes are the real ones."""
    weights = comfy_sd15_unet(seed).state_dict() if width_mult == 1 else None
    return _core_patcher("SD15", sd15_unet_args(width_mult), weights, seed)


def core_svd_patcher(seed: int = 2):
    """Core's own SVD model (``comfy.model_base.SVD_img2vid``, v-prediction EDM, temporal attention and resblocks) at
    the tiny SVD test width, in core's ``ModelPatcher`` on the CPU.  Its ADM input is core's (3 × 256 from its own
    timestep embedder), so the weights are random, not the tiny single file's (whose ADM width is diffusers' 96)."""
    return _core_patcher("SVD_img2vid", svd_unet_args(adm_in_channels=768), None, seed)


NATIVE_SD15_FILE = "checkpoints/native_sd15_320.safetensors"
NATIVE_SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=1, channel_mult=(1,),
                        use_spatial_transformer=True, transformer_depth=[1], transformer_depth_output=[1, 1],
                        transformer_depth_middle=1, context_dim=768, num_heads=8, legacy=False,
                        use_linear_in_transformer=False)
NATIVE_ID_FILE = "performer/adapters/native_identity_sd15.safetensors"


def native_identity_adapter(seed: int = 32):
    """A face-token identity adapter (no CLIP-image tokens) for the native SD1.5 checkpoint's UNet layout, its layer
    names read off core's UNet by the native patch's own layout map; K/V projections random small (it 'acts')."""
    ensure_comfy_importable()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from performer_pkg.models.attention.identity import IdentityAdapter
    from performer_pkg.nodes.native import cross_attention_keys

    with torch.device("meta"):
        unet = UNetModel(**NATIVE_SD15_UNET)
    layers = {name: [768, 320] for name in cross_attention_keys(unet).values()}
    torch.manual_seed(seed)
    return IdentityAdapter(layers, cross_dim=768, clip_dim=0, face_dim=512, num_face_tokens=2)


def native_svd_identity_adapter(seed: int = 33):
    """A face-token identity adapter for core's tiny SVD UNet (:func:`core_svd_patcher`): the spatial and the temporal
    cross-attention of every video transformer, named as the pipe's SVD adapter names them (diffusers'
    ``transformer_blocks`` / ``temporal_transformer_blocks``), read off core's UNet by the native patch's layout maps."""
    ensure_comfy_importable()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from performer_pkg.models.attention.identity import IdentityAdapter
    from performer_pkg.nodes.native import _spatial_transformers, cross_attention_keys, temporal_cross_attention_keys

    with torch.device("meta"):
        unet = UNetModel(**svd_unet_args(adm_in_channels=768))
    width = {(b, i): layer.transformer_blocks[0].attn2.to_k.weight.shape[0] for b, i, layer in _spatial_transformers(unet)}
    names = {**{n: k for k, n in cross_attention_keys(unet).items()}, **{n: k for k, n in temporal_cross_attention_keys(unet).items()}}
    layers = {n: [SVD["context_dim"], width[k[:2]]] for n, k in names.items()}
    torch.manual_seed(seed)
    ad = IdentityAdapter(layers, cross_dim=SVD["context_dim"], clip_dim=0, face_dim=512, num_face_tokens=2)
    return _randomise(ad, seed, std=0.3)


def native_sd15_checkpoint(path: str, seed: int = 31) -> str:
    """An SD1.5 single file that core's CheckpointLoaderSimple recognises, made with core's own classes and random
    weights (fp16, ≈ 470 MB): a narrow one-level UNet with SD1.5's detection keys (320 base channels, 768 context,
    no linear projections, 8 heads), the real-size SD VAE and the real-size CLIP-L text encoder (core fixes both
    architectures, so neither can be tiny).  For the native workflows in the test host."""
    ensure_comfy_importable()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    if os.path.exists(path):
        return path
    unet = _randomise(UNetModel(**NATIVE_SD15_UNET), seed)
    sd = {"model.diffusion_model." + k: v.half() for k, v in unet.state_dict().items()}
    sd.update(_sd15_vae_and_clip_state(seed))
    return _save(sd, path)


def _sd15_vae_and_clip_state(seed: int) -> Dict[str, torch.Tensor]:
    """The real-size SD VAE and CLIP-L text encoder (core fixes both architectures, so neither can be tiny), random
    (``_randomise``), fp16, under their SD1.5 checkpoint prefixes."""
    ensure_comfy_importable()
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=_full_ddconfig(), embed_dim=4)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    sd = {}
    for prefix, module, keep in (("first_stage_model.", vae, ""), ("cond_stage_model.", clip, "transformer.text_model.")):
        _randomise(module, seed)
        sd.update({prefix + k: v.half() for k, v in module.state_dict().items() if k.startswith(keep)})
    return sd


# ----------------------------------------------------------------------------- real-size files (AnimateDiff-Evolved interop)
# ADE builds its motion model with SD1.5's channels written into its code and injects one module per SD1.5 block
# (research/native.md), so its interop test needs the real SD1.5 architecture. Random weights, fp16, drawn tensor by
# tensor from shapes read off the real classes built on the meta device (no full fp32 copy in memory).
ADE_SD15_FILE = "checkpoints/ade_sd15_full.safetensors"
ADE_MM_FILE = "animatediff_models/ade_mm_sd_v15_v2_full.safetensors"
ADE_CN_FILE = "controlnet/ade_control_sd15_openpose_full.safetensors"
ADE_LORA_FILE = "loras/ade_sd15_lora.safetensors"
FULL_SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
                      channel_mult=(1, 2, 4, 4), use_spatial_transformer=True, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                      context_dim=768, num_heads=8, legacy=False, use_linear_in_transformer=False)


def _random_state(module_on_meta: torch.nn.Module, seed: int) -> Dict[str, torch.Tensor]:
    """fp16 random tensors for a module's state dict (built on the meta device, or allocated and not initialised):
    norms ≈ 1, biases small, weights N(0, 1/fan_in) so activations stay O(1) through a real-depth network; integer
    buffers kept (zeros on the meta device)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module_on_meta.state_dict().items():
        if not t.is_floating_point():
            out[name] = torch.zeros(t.shape, dtype=t.dtype) if t.device.type == "meta" else t.clone()
        elif name.endswith("mix_factor"):
            out[name] = torch.randn(t.shape, generator=g).half()
        elif name.endswith("weight") and ("norm" in name or t.ndim == 1):
            out[name] = (1 + 0.05 * torch.randn(t.shape, generator=g)).half()
        elif t.ndim == 1:
            out[name] = (0.02 * torch.randn(t.shape, generator=g)).half()
        else:
            fan_in = max(1, t[0].numel())
            out[name] = (torch.randn(t.shape, generator=g) / fan_in ** 0.5).half()
    return out


def ade_models(root: str, seed: int = 41) -> Dict[str, str]:
    """A real-size SD1.5 checkpoint CheckpointLoaderSimple recognises (UNet + SD VAE + CLIP-L), an AnimateDiff v2
    motion module in its original layout, an SD1.5 openpose-shaped ControlNet and a small LoRA, all random; ≈ 3.8 GB.
    Built once per models root (skipped when the files exist)."""
    ensure_comfy_importable()
    from comfy.cldm.cldm import ControlNet
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from diffusers import MotionAdapter

    P = {k: os.path.join(root, v) for k, v in (("sd15", ADE_SD15_FILE), ("mm", ADE_MM_FILE), ("cn", ADE_CN_FILE),
                                                ("lora", ADE_LORA_FILE))}
    if not os.path.exists(P["sd15"]):
        with torch.device("meta"):
            unet = UNetModel(**FULL_SD15_UNET)
        sd = {"model.diffusion_model." + k: v for k, v in _random_state(unet, seed).items()}
        del unet
        sd.update(_sd15_vae_and_clip_state(seed))
        _save(sd, P["sd15"])
        del sd
    if not os.path.exists(P["mm"]):
        with torch.device("meta"):
            ad = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                               motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                               use_motion_mid_block=True)
        _save(_original_motion_layout(_random_state(ad, seed + 1), 32), P["mm"])
    if not os.path.exists(P["cn"]):
        with torch.device("meta"):
            cn = ControlNet(hint_channels=3, **{k: v for k, v in FULL_SD15_UNET.items()
                                                if k not in ("out_channels", "transformer_depth_output")})
        _save({"control_model." + k: v for k, v in _random_state(cn, seed + 2).items()}, P["cn"])
    if not os.path.exists(P["lora"]):  # kohya-style names core maps onto the ldm UNet; rank 4 on a few attentions
        g = torch.Generator().manual_seed(seed + 3)
        lora = {}
        for blk, c in (("down_blocks_0_attentions_0", 320), ("mid_block_attentions_0", 1280), ("up_blocks_3_attentions_2", 320)):
            for proj in ("to_q", "to_k", "to_v"):
                key = f"lora_unet_{blk}_transformer_blocks_0_attn1_{proj}"
                lora[key + ".lora_down.weight"] = (0.1 * torch.randn(4, c, generator=g)).half()
                lora[key + ".lora_up.weight"] = (0.1 * torch.randn(c, 4, generator=g)).half()
                lora[key + ".alpha"] = torch.tensor(4.0).half()
        _save(lora, P["lora"])
    return P


CHAMP_FILES = {"denoising": "diffusion_models/denoising_unet.pth", "reference": "diffusion_models/reference_unet.pth",
               "motion": "animatediff_models/motion_module.pth", "clip_vision": "clip_vision/clip-vit-large-patch14.safetensors"}
CHAMP_KINDS = ("depth", "normal", "semantic_map", "dwpose")


def champ_models(root: str, seed: int = 71) -> Dict[str, str]:
    """The files the bundled Champ workflow names, for the test host (after :func:`ade_models`): Champ's denoising UNet
    in the released layout (diffusers names, fp16) holding the real-size ADE test checkpoint's UNet, its ReferenceNet
    (a link to the same file: a full UNet loads as a reference too), the motion module in the released .pth form (the
    ADE test file's tensors, an AnimateDiff v2 layout like Champ's), four guidance encoders in Champ's key layout at a
    tiny inner width (320-wide output) and a random CLIP ViT-L/14 (core's ViT-L config) ≈ 2.5 GB.  Built once."""
    from performer_pkg.models.guidance.pose_guider import ChampGuidanceEncoder
    from performer_pkg.nodes.native_released import diffusers_table
    from safetensors import safe_open

    P = {k: os.path.join(root, v) for k, v in CHAMP_FILES.items()}
    if not os.path.exists(P["denoising"]):
        pre = "model.diffusion_model."
        with safe_open(os.path.join(root, ADE_SD15_FILE), "pt") as f:
            core = {k[len(pre):]: f.get_tensor(k) for k in f.keys() if k.startswith(pre)}
        cfg = dict(FULL_SD15_UNET, num_res_blocks=[2] * 4)
        sd = {d: core[c].half() for d, c in diffusers_table(cfg).items() if c in core}
        os.makedirs(os.path.dirname(P["denoising"]), exist_ok=True)
        torch.save(sd, P["denoising"])
        del core, sd
    if not os.path.exists(P["reference"]):
        os.symlink(os.path.basename(P["denoising"]), P["reference"])
    if not os.path.exists(P["motion"]):
        from safetensors.torch import load_file

        torch.save(load_file(os.path.join(root, ADE_MM_FILE)), P["motion"])
    for i, kind in enumerate(CHAMP_KINDS):
        path = os.path.join(root, "performer", "adapters", f"guidance_encoder_{kind}.pth")
        if not os.path.exists(path):
            with torch.device("meta"):
                enc = ChampGuidanceEncoder(320, (16, 32, 32, 64))
            torch.save(_random_state(enc, seed + i), path)
    if not os.path.exists(P["clip_vision"]):
        ensure_comfy_importable()
        import comfy.clip_vision

        cfg = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")
        cv = comfy.clip_vision.ClipVisionModel(cfg)
        _save(_random_state(cv.model, seed + 9), P["clip_vision"])
    return P


MUSEPOSE_MM_FILE = "animatediff_models/tiny_musepose_motion_module.pth"
RELEASED_WORKFLOWS = ("performer_native_champ", "performer_native_mimicmotion")  # need the ``released_files`` fixture
NATIVE_SVD_FILE = "checkpoints/native_svd_full.safetensors"
MIMICMOTION_FILE = "performer/adapters/MimicMotion_1-1.pth"


def mimicmotion_checkpoint(root: str, seed: int = 61) -> str:
    """``MimicMotion_1-1.pth`` in the released layout (``unet.*`` under diffusers' names + ``pose_net.*``, fp16) holding
    the real-size SVD test file's own UNet with ``conv_out.bias`` moved by 0.3 (so sampling with it differs) and a
    random PoseNet; ≈ 3 GB.  Built once per models root."""
    path = os.path.join(root, MIMICMOTION_FILE)
    if os.path.exists(path):
        return path
    from safetensors import safe_open

    from performer_pkg.models.backbones.convert_svd import unet_keys_to_diffusers

    pre = "model.diffusion_model."
    sd = {}
    with safe_open(native_svd_checkpoint(os.path.join(root, NATIVE_SVD_FILE)), "pt") as f:
        for k in f.keys():
            if k.startswith(pre):
                sd[k[len(pre):]] = f.get_tensor(k).half()
    out = {"unet." + k: v for k, v in unet_keys_to_diffusers(sd, 2).items()}
    del sd
    out["unet.conv_out.bias"] = out["unet.conv_out.bias"] + 0.3
    with open(os.path.join(HERE, "data", "released_layouts", "MimicMotion_1-1.pth.json")) as fh:
        keys = {k: v for k, v in json.load(fh)["keys"].items() if k.startswith("pose_net.")}
    g = torch.Generator().manual_seed(seed)
    out.update({k: (torch.ones(v) * 1.13 if k.endswith("scale") else 0.05 * torch.randn(v, generator=g)).half()
                for k, v in keys.items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(out, path)
    return path


def native_svd_checkpoint(path: str, seed: int = 51) -> str:
    """An SVD single file ImageOnlyCheckpointLoader recognises, random weights, fp16, ≈ 4.3 GB: core's detection needs
    the full SVD UNet layout and a ViT-H CLIP vision (research/native.md), so both are real size; the video VAE too
    (core fixes its architecture). The CLIP vision goes in under SVD's prefix in the naming core converts to."""
    if os.path.exists(path):
        return path
    ensure_comfy_importable()
    import comfy.clip_vision
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    args = dict(svd_unet_args(adm_in_channels=768), model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                context_dim=1024)
    with torch.device("meta"):
        unet = UNetModel(**args)
    sd = {"model.diffusion_model." + k: v for k, v in _random_state(unet, seed).items()}
    del unet
    cv_cfg = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    cv = comfy.clip_vision.ClipVisionModel(cv_cfg)  # comfy ops: allocated, not initialised
    sd.update({"conditioner.embedders.0.open_clip.model.visual." + k: v
               for k, v in _random_state(cv.model, seed + 1).items()})
    del cv
    vae = comfy_svd_vae(seed + 2, full=True)
    sd.update({"first_stage_model." + k: v.half() for k, v in vae.state_dict().items()})
    return _save(sd, path)


def _full_ddconfig():
    """The real SD / SVD VAE's encoder-decoder sizes (core's VAE detection fixes them)."""
    return dict(_ddconfig(), ch=128, ch_mult=[1, 2, 4, 4])


def _ddconfig():
    return dict(double_z=True, z_channels=VAE["z_channels"], resolution=256, in_channels=3, out_ch=3, ch=VAE["ch"],
                ch_mult=VAE["ch_mult"], num_res_blocks=VAE["num_res_blocks"], attn_resolutions=[], dropout=0.0)


def comfy_sd15_vae(seed=3):
    ensure_comfy_importable()
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return _randomise(AutoencoderKL(ddconfig=_ddconfig(), embed_dim=VAE["z_channels"]), seed)


def comfy_svd_vae(seed=4, full=False):
    ensure_comfy_importable()
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    enc = _full_ddconfig() if full else _ddconfig()  # full: SVD's own sizes
    dec = dict(enc, video_kernel_size=[3, 1, 1], alpha=0.0, merge_strategy="learned", time_mode="conv-only")
    m = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": enc},
        decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": dec})
    return _randomise(m, seed)


def comfy_controlnet(seed=5):
    ensure_comfy_importable()
    from comfy.cldm.cldm import ControlNet

    m = ControlNet(image_size=32, in_channels=4, model_channels=SD15["model_channels"], hint_channels=3,
                   num_res_blocks=SD15["num_res_blocks"], channel_mult=SD15["channel_mult"],
                   use_spatial_transformer=True, transformer_depth=[1, 0], transformer_depth_middle=1,
                   context_dim=SD15["context_dim"], num_heads=SD15["num_heads"], legacy=False,
                   use_linear_in_transformer=False)
    return _randomise(m, seed)


def hf_text_encoder(seed=6):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return _randomise(CLIPTextModel(CLIPTextConfig(**TEXT)), seed)


def open_clip_visual_state(seed=7) -> Dict[str, torch.Tensor]:
    """An open_clip ViT ``visual.*`` state dict (the layout inside SVD checkpoints)."""
    g = torch.Generator().manual_seed(seed)
    d, n = VISION["hidden"], (VISION["image_size"] // VISION["patch"]) ** 2 + 1

    def r(*s, std=0.05):
        return std * torch.randn(*s, generator=g)

    sd = {"conv1.weight": r(d, 3, VISION["patch"], VISION["patch"]), "class_embedding": r(d),
          "positional_embedding": r(n, d), "ln_pre.weight": 1 + r(d), "ln_pre.bias": r(d),
          "ln_post.weight": 1 + r(d), "ln_post.bias": r(d), "proj": r(d, VISION["proj"])}
    for i in range(VISION["layers"]):
        b = f"transformer.resblocks.{i}."
        sd.update({b + "ln_1.weight": 1 + r(d), b + "ln_1.bias": r(d), b + "ln_2.weight": 1 + r(d), b + "ln_2.bias": r(d),
                   b + "attn.in_proj_weight": r(3 * d, d), b + "attn.in_proj_bias": r(3 * d),
                   b + "attn.out_proj.weight": r(d, d), b + "attn.out_proj.bias": r(d),
                   b + "mlp.c_fc.weight": r(4 * d, d), b + "mlp.c_fc.bias": r(4 * d),
                   b + "mlp.c_proj.weight": r(d, 4 * d), b + "mlp.c_proj.bias": r(d)})
    return sd


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def sd15_single_file_state() -> Dict[str, torch.Tensor]:
    te = hf_text_encoder().state_dict()
    te = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in te.items()}
    return {**_prefixed(comfy_sd15_unet().state_dict(), "model.diffusion_model."),
            **_prefixed(comfy_sd15_vae().state_dict(), "first_stage_model."),
            **_prefixed(te, "cond_stage_model.transformer.")}


def svd_single_file_state() -> Dict[str, torch.Tensor]:
    return {**_prefixed(comfy_svd_unet().state_dict(), "model.diffusion_model."),
            **_prefixed(comfy_svd_vae().state_dict(), "first_stage_model."),
            **_prefixed(open_clip_visual_state(), "conditioner.embedders.0.open_clip.model.visual.")}


def motion_module_original_state(seed=8, length: int = 32) -> Dict[str, torch.Tensor]:
    """A diffusers MotionAdapter written in AnimateDiff's original (mm_sd_v15_v2) key names (``length``: positional
    encodings; MusePose's motion module has 128)."""
    from diffusers import MotionAdapter

    ad = _randomise(MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=8,
                                  motion_norm_num_groups=32, motion_max_seq_length=length, use_motion_mid_block=True), seed)
    return _original_motion_layout(ad.state_dict(), length)


def _original_motion_layout(state: Dict[str, torch.Tensor], max_len: int) -> Dict[str, torch.Tensor]:
    """A diffusers MotionAdapter state dict renamed to AnimateDiff's original (mm_sd_v15_v2) keys, with the sinusoidal
    position tables the original files carry."""
    import re

    out = {}
    for k, v in state.items():
        if ".pos_embed." in k:  # diffusers' own copy of the tables; original files carry pos_encoder.pe (added below)
            continue
        k = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", k)
        k = (k.replace(".norm1.", ".norms.0.").replace(".norm2.", ".norms.1.").replace(".norm3.", ".ff_norm.")
              .replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1."))
        out[k] = v
    for k in list(out):
        if k.endswith("attention_blocks.0.to_q.weight") or k.endswith("attention_blocks.1.to_q.weight"):
            c = out[k].shape[0]
            pos = torch.arange(max_len).unsqueeze(1)
            div = torch.exp(torch.arange(0, c, 2) * (-torch.log(torch.tensor(10000.0)) / c))
            pe = torch.zeros(1, max_len, c)
            pe[0, :, 0::2], pe[0, :, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
            out[k.replace("to_q.weight", "pos_encoder.pe")] = pe.to(out[k].dtype)
    return out


def build_models_tree(root: str) -> Dict[str, str]:
    """Write every tiny model into ``root`` laid out like ComfyUI's ``models/`` folder.

    Returns a dict naming the files/folders written (relative to ``root``)."""
    torch.manual_seed(0)
    import performer_pkg  # noqa: F401  (registered by tests/conftest.py or scripts/demo.py)
    from performer_pkg.models.backbones import loaders as backbones

    paths = {
        "sd15_file": "checkpoints/tiny_sd15.safetensors",
        "svd_file": "checkpoints/tiny_svd.safetensors",
        "sd15_dir": "diffusers/tiny_sd15",
        "svd_dir": "diffusers/tiny_svd",
        "mm_file": "animatediff_models/tiny_mm_sd_v15_v2.safetensors",
        "mm_dir": "animatediff_models/tiny_motion_adapter",
        "cn_file": "controlnet/tiny_control_sd15_openpose.safetensors",
        "cn_dir": "controlnet/tiny_control_sd15_openpose_diffusers",
    }
    for sub in ("performer/pose", "performer/body", "performer/adapters", "performer/personalised", "performer/face", "clip_vision", "vae"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    P = {k: os.path.join(root, v) for k, v in paths.items()}
    _save(sd15_single_file_state(), P["sd15_file"])
    _save(svd_single_file_state(), P["svd_file"])
    _save(motion_module_original_state(), P["mm_file"])
    torch.save(motion_module_original_state(seed=9, length=128), os.path.join(root, MUSEPOSE_MM_FILE))  # as released: .pth
    _save(_prefixed(comfy_controlnet().state_dict(), "control_model."), P["cn_file"])

    tok = os.path.join(COMFY_DIR, "comfy", "sd1_tokenizer")
    sd15 = backbones.load_sd15(P["sd15_file"], device="cpu", tokenizer_dirs=[tok])
    _write_diffusers_folder(P["sd15_dir"], "StableDiffusionPipeline",
                            dict(unet=sd15.unet, vae=sd15.vae, text_encoder=sd15.text_encoder), sd15.scheduler_config)
    shutil.copytree(tok, os.path.join(P["sd15_dir"], "tokenizer"))
    svd = backbones.load_svd(P["svd_file"], device="cpu")
    _write_diffusers_folder(P["svd_dir"], "StableVideoDiffusionPipeline",
                            dict(unet=svd.unet, vae=svd.vae, image_encoder=svd.image_encoder), svd.scheduler_config)
    svd.feature_extractor.save_pretrained(os.path.join(P["svd_dir"], "feature_extractor"))
    backbones.load_motion_adapter(P["mm_file"], device="cpu").save_pretrained(P["mm_dir"])
    backbones.load_controlnet(P["cn_file"], device="cpu").save_pretrained(P["cn_dir"])
    paths.update(build_addons(root, sd15, svd))
    paths.update(dwpose_onnx_pair(root))
    paths.update(dwpose_torchscript_pair(root))
    native_sd15_checkpoint(os.path.join(root, NATIVE_SD15_FILE))
    paths["native_sd15_file"] = NATIVE_SD15_FILE
    native_identity_adapter().save(os.path.join(root, NATIVE_ID_FILE))
    paths["native_id_file"] = NATIVE_ID_FILE
    native_svd_checkpoint(os.path.join(root, NATIVE_SVD_FILE))
    paths["native_svd_file"] = NATIVE_SVD_FILE
    _save(wan_dit_state(model_type="animate"), os.path.join(root, WAN_ANIMATE_FILE))
    _save(wan_vae_state(), os.path.join(root, WAN_VAE_FILE))
    paths.update(wan_animate_file=WAN_ANIMATE_FILE, wan_vae_file=WAN_VAE_FILE)
    return paths


def tiny_pose_controller(seed=11, downsample=2, kinds=None):
    """A pose controller whose zero conv has been 'trained' a little (random small weights) so it acts."""
    from performer_pkg.models.guidance.pose_controller import KINDS, PoseController

    torch.manual_seed(seed)
    pc = PoseController(latent_channels=4, downsample=downsample, channels=(8, 16), heads=2, kinds=kinds or KINDS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for enc in pc.encoders.values():
            enc.conv_out.weight.copy_(0.05 * torch.randn(enc.conv_out.weight.shape, generator=g))
    return pc


def tiny_identity_adapter(unet, clip_dim, seed=12):
    from performer_pkg.models.attention.identity import IdentityAdapter

    torch.manual_seed(seed)
    return IdentityAdapter.for_unet(unet, clip_dim=clip_dim, num_image_tokens=2, face_dim=512, num_face_tokens=2)


def arcface_onnx_bytes(seed=13) -> bytes:
    """A tiny ONNX model with ArcFace's real I/O signature: input 'input.1' (N,3,112,112) -> (N,512)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((0.1 * rng.standard_normal((8, 3, 8, 8))).astype(np.float32), "conv_w")
    fw = numpy_helper.from_array((0.3 * rng.standard_normal((512, 8))).astype(np.float32), "fc_w")
    fb = numpy_helper.from_array((0.01 * rng.standard_normal(512)).astype(np.float32), "fc_b")
    nodes = [helper.make_node("Conv", ["input.1", "conv_w"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["683"], transB=1)]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])], [w, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_addons(root: str, sd15, svd) -> Dict[str, str]:
    """Pose controllers, identity adapters, a CLIP vision file and an ArcFace ONNX for the tiny backbones."""
    add = {
        "pose_sd15": "performer/adapters/tiny_pose_controller_sd15.safetensors",
        "pose_svd": "performer/adapters/tiny_pose_controller_svd.safetensors",
        "pose_native_sd15": "performer/adapters/native_pose_controller_sd15.safetensors",  # 8× latents (real SD VAE)
        "id_sd15": "performer/adapters/tiny_identity_sd15.safetensors",
        "id_svd": "performer/adapters/tiny_identity_svd.safetensors",
        "clip_vision": "clip_vision/tiny_clip_vision.safetensors",
        "arcface": "performer/face/tiny_arcface.onnx",
    }
    P = {k: os.path.join(root, v) for k, v in add.items()}
    tiny_pose_controller(11, sd15.vae_scale_factor).save(P["pose_sd15"])
    tiny_pose_controller(14, svd.vae_scale_factor).save(P["pose_svd"])
    tiny_pose_controller(15, 8).save(P["pose_native_sd15"])
    clip_dim = svd.image_encoder.config.projection_dim
    tiny_identity_adapter(sd15.unet, clip_dim).save(P["id_sd15"])
    tiny_identity_adapter(svd.unet, 0, seed=16).save(P["id_svd"])
    _save({k: v for k, v in svd.image_encoder.state_dict().items()}, P["clip_vision"])
    with open(P["arcface"], "wb") as fh:
        fh.write(arcface_onnx_bytes())
    return add


def _write_diffusers_folder(path, class_name, parts, scheduler_config):
    os.makedirs(path, exist_ok=True)
    for name, module in parts.items():
        module.save_pretrained(os.path.join(path, name))
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    with open(os.path.join(path, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump(scheduler_config, fh, indent=1)
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1"}
    with open(os.path.join(path, "model_index.json"), "w") as fh:
        json.dump(index, fh, indent=1)


if __name__ == "__main__":  # python tests/tiny_models.py <root>
    sys.path.insert(0, HERE)
    import pack_alias

    pack_alias.register_package()
    print(json.dumps(build_models_tree(sys.argv[1]), indent=1))


# ----------------------------------------------------------------------------- DWPose ONNX pair


DW_BOX = (64.0, 32.0, 192.0, 240.0)  # the person box the tiny detector reports on a 256×256 frame
DW_UV = None  # per-keypoint (u, v) position inside the pose crop, set by dwpose_onnx_pair


def _const_graph(name, inputs, outputs, consts):
    """out_i = const_i + 0·mean(input): real I/O names and shapes, deterministic outputs, input-dependent graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    inp = inputs[0][0]
    nodes.append(helper.make_node("ReduceMean", [inp], ["m"], axes=[1, 2, 3], keepdims=1))
    nodes.append(helper.make_node("Reshape", ["m", "shape3"], ["m3"]))
    nodes.append(helper.make_node("Mul", ["m3", "zero"], ["m0"]))
    inits.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"))
    inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
    for (oname, _), c in zip(outputs, consts):
        inits.append(numpy_helper.from_array(c.astype(np.float32), oname + "_c"))
        nodes.append(helper.make_node("Add", [oname + "_c", "m0"], [oname]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def dwpose_onnx_pair(root: str, frame_size: int = 256):
    """``yolox_l.onnx`` ((1,3,640,640) -> (1,8400,85)) reporting one person at DW_BOX, and ``dw-ll_ucoco_384.onnx``
    ((N,3,384,288) -> simcc_x (N,133,576), simcc_y (N,133,768)) putting keypoint j at a known spot of the crop."""
    global DW_UV
    ratio = 640 / frame_size
    x0, y0, x1, y1 = (v * ratio for v in DW_BOX)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    det = np.zeros((1, 8400, 85), np.float32)
    gx, gy = int(cx // 32), int(cy // 32)
    i = 80 * 80 + 40 * 40 + gy * 20 + gx
    det[0, i, :4] = (cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32))
    det[0, i, 4], det[0, i, 5] = 0.9, 0.95
    rng = np.random.default_rng(21)
    ux, vy = rng.integers(20, 560, 133), rng.integers(20, 750, 133)
    DW_UV = np.stack([ux / 2 / 288, vy / 2 / 384], 1)
    sx = np.full((1, 133, 576), 0.01, np.float32)
    sy = np.full((1, 133, 768), 0.01, np.float32)
    sx[0, np.arange(133), ux] = 0.8
    sy[0, np.arange(133), vy] = 0.7
    d = os.path.join(root, "performer", "pose")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "yolox_l.onnx"), "wb") as fh:
        fh.write(_const_graph("tiny_yolox", [("input", [1, 3, 640, 640])], [("output", [1, 8400, 85])], [det]))
    with open(os.path.join(d, "dw-ll_ucoco_384.onnx"), "wb") as fh:
        fh.write(_const_graph("tiny_rtmpose", [("input", ["batch", 3, 384, 288])],
                              [("simcc_x", ["batch", 133, 576]), ("simcc_y", ["batch", 133, 768])], [sx, sy]))
    return {"dw_det": "performer/pose/yolox_l.onnx", "dw_pose": "performer/pose/dw-ll_ucoco_384.onnx"}


class _TinyYoloxTS(torch.nn.Module):
    """TorchScript stand-in with YOLOX's I/O: (1, 3, 640, 640) raw pixels → (1, 8400, 85); fp16 parameters, as a
    half-precision export would have."""

    def __init__(self, det):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
        self.register_buffer("det", torch.from_numpy(det))  # fp32, so the box is exactly the ONNX pair's

    def forward(self, x):
        return self.det + 0.0 * (x * self.scale).float().mean()


class _TinyRtmposeTS(torch.nn.Module):
    """TorchScript stand-in with RTMPose's I/O, traced at batch 5 like controlnet_aux's "bs5" file: (5, 3, 384, 288) →
    (simcc_x (5, 133, 576), simcc_y (5, 133, 768)); any other batch is refused, as a fixed-batch trace would."""

    def __init__(self, sx, sy):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.register_buffer("sx", torch.from_numpy(sx))
        self.register_buffer("sy", torch.from_numpy(sy))

    def forward(self, x):
        if x.shape[0] != 5:
            raise RuntimeError("this trace takes batches of exactly 5")
        m = 0.0 * (x * self.w).mean()
        return self.sx.expand(5, -1, -1) + m, self.sy.expand(5, -1, -1) + m


def dwpose_torchscript_pair(root: str):
    """The ONNX pair's constants (:func:`dwpose_onnx_pair`, which must run first) as comfyui_controlnet_aux's TorchScript
    files: ``yolox_l.torchscript.pt`` and ``dw-ll_ucoco_384_bs5.torchscript.pt``."""
    import onnx
    from onnx import numpy_helper

    d = os.path.join(root, "performer", "pose")
    consts = {}
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        for init in onnx.load(os.path.join(d, name)).graph.initializer:
            consts[init.name] = numpy_helper.to_array(init)
    torch.jit.script(_TinyYoloxTS(consts["output_c"])).save(os.path.join(d, "yolox_l.torchscript.pt"))
    torch.jit.script(_TinyRtmposeTS(consts["simcc_x_c"], consts["simcc_y_c"])).save(
        os.path.join(d, "dw-ll_ucoco_384_bs5.torchscript.pt"))
    return {"dw_det_ts": "performer/pose/yolox_l.torchscript.pt", "dw_pose_ts": "performer/pose/dw-ll_ucoco_384_bs5.torchscript.pt"}


DEMO_MODELS = os.path.join(REPO, "assets", "demo_models")


def add_demo_models(root: str) -> None:
    """Lay the shipped demo model (assets/demo_models, scripts/train_demo_models.py) into a ComfyUI models tree under
    the names the demo workflow uses."""
    for src, dst in (("sd15", os.path.join("diffusers", "performer_demo_sd15")),
                     ("motion_adapter", os.path.join("animatediff_models", "performer_demo_motion_adapter"))):
        shutil.rmtree(os.path.join(root, dst), ignore_errors=True)
        shutil.copytree(os.path.join(DEMO_MODELS, src), os.path.join(root, dst))
    os.makedirs(os.path.join(root, "performer", "adapters"), exist_ok=True)
    shutil.copy(os.path.join(DEMO_MODELS, "pose_controller.safetensors"),
                os.path.join(root, "performer", "adapters", "performer_demo_pose_controller.safetensors"))


# ----------------------------------------------------------------------------- Wan 2.x (core's own classes)
# Core detects a Wan DiT from its state dict at any width that is a multiple of 128 (one head per 128 channels), so
# these load through core's own loaders (UNETLoader / ``comfy.sd.load_diffusion_model_state_dict``) like real files.
# The text width stays Wan's 4096 (core does not read it from the file); the text encoder itself (umt5-xxl) has a
# fixed real-size architecture in core, so tests give the DiT text embeddings directly (``wan_text``).
WAN = dict(dim=128, ffn_dim=256, num_layers=2, text_dim=4096, out_dim=16)
WAN_VAE_DIM = 8  # core reads the Wan 2.1 VAE's base width from ``decoder.head.0.gamma``
# Tiny random stand-ins under the names of the files users download (Comfy-Org's repackaged Wan 2.2 / 2.1 files), so the
# bundled Wan workflow names the real files
WAN_ANIMATE_FILE = "diffusion_models/wan2.2_animate_14B_bf16.safetensors"
WAN_VAE_FILE = "vae/wan_2.1_vae.safetensors"


def wan_dit_state(seed: int = 61, model_type: str = "t2v", **over) -> Dict[str, torch.Tensor]:
    """A Wan DiT state dict in core's (and the released files') key layout: ``t2v``, ``ti2v`` (Wan 2.2 5B, 48 channels),
    ``i2v`` (36 input channels +
    the CLIP-vision projection), ``animate`` (Wan-Animate: pose patch embedding, face adapter, motion encoder; needs
    at least 5 layers for one face-adapter layer) or ``vace`` (one VACE block).  Random weights, fp16."""
    ensure_comfy_importable()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.wan.model_animate import AnimateWanModel

    cfg = {**WAN, **over}
    cls, kw = WanModel, dict(model_type=model_type, in_dim=16)
    if model_type == "i2v":
        kw["in_dim"] = 36
    elif model_type == "ti2v":  # Wan 2.2 TI2V 5B: 48-channel latents (its own VAE), per-frame timesteps from the mask
        kw, cfg["out_dim"] = dict(model_type="t2v", in_dim=48), 48
    elif model_type == "animate":
        cls, kw = AnimateWanModel, dict(in_dim=36)
        cfg["num_layers"] = max(cfg["num_layers"], 5)
    elif model_type == "vace":  # Wan 2.1 VACE: control blocks beside the main ones
        from comfy.ldm.wan.model import VaceWanModel

        cls, kw = VaceWanModel, dict(in_dim=16, vace_layers=1, vace_in_dim=96)
    m = cls(num_heads=cfg["dim"] // 128, device="meta", operations=comfy.ops.disable_weight_init, **cfg, **kw)
    sd = _random_state(m, seed)
    if model_type == "animate":  # core's detection needs the face adapter's first block
        assert "face_adapter.fuser_blocks.0.k_norm.weight" in sd
    return sd


def core_wan_patcher(seed: int = 61, model_type: str = "t2v", **over):
    """Core's Wan model (``comfy.model_base.WAN21`` through core's own detection and loader) in float32 on the CPU."""
    ensure_comfy_importable()
    import comfy.sd

    sd = {k: v.float() for k, v in wan_dit_state(seed, model_type, **over).items()}
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})


def wan_text(seed: int = 62, tokens: int = 8) -> torch.Tensor:
    """Stand-in umt5 text embeddings (1, tokens, 4096) for the tiny DiT."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, tokens, WAN["text_dim"]), generator=g)


def wan_vae_state(seed: int = 63, dim: int = WAN_VAE_DIM) -> Dict[str, torch.Tensor]:
    """A Wan 2.1 VAE state dict (core's ``comfy.ldm.wan.vae.WanVAE``, the released file's keys) at base width ``dim``."""
    ensure_comfy_importable()
    from comfy.ldm.wan.vae import WanVAE

    vae = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    return _random_state(vae, seed)
