"""Stable Video Diffusion single-file (sgm / "generative-models") checkpoints -> diffusers modules.

diffusers cannot read ``svd.safetensors`` / ``svd_xt.safetensors`` with ``from_single_file``
(``UNetSpatioTemporalConditionModel`` and ``AutoencoderKLTemporalDecoder`` are not single-file
loadable), yet that is the file most ComfyUI users have in ``models/checkpoints``.  This module maps
the three parts it holds:

* ``model.diffusion_model.*``  (sgm VideoUNet)          -> UNetSpatioTemporalConditionModel
* ``first_stage_model.*``      (encoder + VideoDecoder)  -> AutoencoderKLTemporalDecoder
* ``conditioner.embedders.0.open_clip.model.visual.*``   -> CLIPVisionModelWithProjection

Architectures are read from tensor shapes; head sizes, which weights do not reveal, follow SVD
(64-d UNet heads, 80-d ViT-H heads).
"""
from __future__ import annotations

import re
from typing import Dict, Tuple

import torch

from ..errors import BadModelFileError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
UNET_HEAD_DIM = 64
VIT_HEAD_DIM = 80

_RES = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
_VAE_RES = [("nin_shortcut.", "conv_shortcut.")]
_VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def _sub(rest: str, table) -> str:
    for a, b in table:
        if rest.startswith(a):
            return b + rest[len(a):]
    return rest


def _unet_resnet(rest: str) -> str:
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _sub(rest[len("time_stack."):], _RES)
    if rest.startswith("time_mixer."):
        return rest
    return "spatial_res_block." + _sub(rest, _RES)


def _unet_attention(rest: str) -> str:
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack."):]
    if rest.startswith("time_pos_embed."):
        return rest.replace("time_pos_embed.0.", "time_pos_embed.linear_1.").replace("time_pos_embed.2.", "time_pos_embed.linear_2.")
    return rest


def unet_keys_to_diffusers(sd: Dict[str, torch.Tensor], layers: int) -> Dict[str, torch.Tensor]:
    """Rename a prefix-stripped sgm VideoUNet state dict to diffusers' names."""
    out = {}
    top = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
           "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
           "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for k, v in sd.items():
        new = None
        for a, b in top.items():
            if k.startswith(a):
                new = b + k[len(a):]
        if new is None and (m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", k)):
            n, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            lvl, j = divmod(n - 1, layers + 1)
            if j == layers:  # downsampler
                new = f"down_blocks.{lvl}.downsamplers.0.conv." + rest[len("op."):]
            elif sub == 0:
                new = f"down_blocks.{lvl}.resnets.{j}." + _unet_resnet(rest)
            else:
                new = f"down_blocks.{lvl}.attentions.{j}." + _unet_attention(rest)
        elif new is None and (m := re.match(r"middle_block\.(\d+)\.(.*)", k)):
            sub, rest = int(m.group(1)), m.group(2)
            new = ("mid_block.attentions.0." + _unet_attention(rest)) if sub == 1 else \
                  (f"mid_block.resnets.{sub // 2}." + _unet_resnet(rest))
        elif new is None and (m := re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", k)):
            n, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            lvl, j = divmod(n, layers + 1)
            if rest.startswith("conv."):  # upsampler (index 1 without attention, 2 with)
                new = f"up_blocks.{lvl}.upsamplers.0.conv." + rest[len("conv."):]
            elif sub == 0:
                new = f"up_blocks.{lvl}.resnets.{j}." + _unet_resnet(rest)
            else:
                new = f"up_blocks.{lvl}.attentions.{j}." + _unet_attention(rest)
        if new is None:
            raise BadModelFileError(f"Unexpected SVD UNet key '{k}'.")
        out[new] = v
    return out


def unet_config(sd: Dict[str, torch.Tensor], path: str = ""):
    from .ldm_layout import infer_ldm_unet_layout, reference_config

    lay = infer_ldm_unet_layout(sd, path)
    cfg = reference_config("svd_unet.json")
    chans = [lay["model_channels"] * m for m in lay["channel_mult"]]
    cfg.update(
        in_channels=lay["in_channels"], out_channels=lay["out_channels"], block_out_channels=chans,
        layers_per_block=lay["layers_per_block"], cross_attention_dim=lay["context_dim"],
        transformer_layers_per_block=lay["transformer_depth"],
        num_attention_heads=[max(1, c // UNET_HEAD_DIM) for c in chans],
        projection_class_embeddings_input_dim=lay["adm_in_channels"],
        addition_time_embed_dim=lay["adm_in_channels"] // 3,
        down_block_types=["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in lay["attention"]],
        up_block_types=["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(lay["attention"])],
    )
    return cfg, lay


def _vae_resnet(rest: str, temporal: bool) -> str:
    if not temporal:
        return _sub(rest, _VAE_RES)
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _sub(rest[len("time_stack."):], _RES)
    if rest.startswith("mix_factor"):
        return "time_mixer." + rest
    return "spatial_res_block." + _sub(rest, _VAE_RES)


def vae_keys_to_diffusers(sd: Dict[str, torch.Tensor], levels: int) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        part, rest = k.split(".", 1)
        temporal = part == "decoder"
        new = None
        if rest.startswith(("conv_in.", "conv_out.")) and not rest.startswith("conv_out.time_mix_conv."):
            new = f"{part}.{rest}"
        elif rest.startswith("conv_out.time_mix_conv."):
            new = "decoder.time_conv_out." + rest[len("conv_out.time_mix_conv."):]
        elif rest.startswith("norm_out."):
            new = f"{part}.conv_norm_out." + rest[len("norm_out."):]
        elif m := re.match(r"mid\.block_(\d)\.(.*)", rest):
            new = f"{part}.mid_block.resnets.{int(m.group(1)) - 1}." + _vae_resnet(m.group(2), temporal)
        elif m := re.match(r"mid\.attn_1\.(.*)", rest):
            new = f"{part}.mid_block.attentions.0." + _sub(m.group(1), _VAE_ATTN)
            if v.ndim == 4:
                v = v[:, :, 0, 0]
        elif m := re.match(r"down\.(\d+)\.block\.(\d+)\.(.*)", rest):
            new = f"encoder.down_blocks.{m.group(1)}.resnets.{m.group(2)}." + _sub(m.group(3), _VAE_RES)
        elif m := re.match(r"down\.(\d+)\.downsample\.conv\.(.*)", rest):
            new = f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv." + m.group(2)
        elif m := re.match(r"up\.(\d+)\.block\.(\d+)\.(.*)", rest):
            new = f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.resnets.{m.group(2)}." + _vae_resnet(m.group(3), True)
        elif m := re.match(r"up\.(\d+)\.upsample\.conv\.(.*)", rest):
            new = f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.conv." + m.group(2)
        elif part in ("quant_conv", "post_quant_conv"):
            new = k if part == "quant_conv" else None
            if new is None:
                continue
        if new is None:
            raise BadModelFileError(f"Unexpected SVD VAE key '{k}'.")
        out[new] = v
    return out


def clip_vision_keys_to_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip ``visual.*`` (ViT) -> transformers ``CLIPVisionModelWithProjection`` names."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "visual_projection.weight": sd["proj"].t().contiguous(),
    }
    for a, b in (("ln_pre", "vision_model.pre_layrnorm"), ("ln_post", "vision_model.post_layernorm")):
        out[f"{b}.weight"], out[f"{b}.bias"] = sd[f"{a}.weight"], sd[f"{a}.bias"]
    ren = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
           "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for k, v in sd.items():
        k = k.replace("attn.in_proj_weight", "attn.in_proj.weight").replace("attn.in_proj_bias", "attn.in_proj.bias")
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)\.(weight|bias)$", k)
        if not m:
            continue
        i, name, kind = m.groups()
        base = f"vision_model.encoder.layers.{i}."
        if name == "attn.in_proj":
            for part, t in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{base}self_attn.{part}.{kind}"] = t.contiguous()
        else:
            out[f"{base}{ren[name]}.{kind}"] = v
    return out


def clip_vision_config(sd: Dict[str, torch.Tensor]):
    from transformers import CLIPVisionConfig

    from .ldm_layout import reference_config

    conv = sd["conv1.weight"]
    hidden, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((sd["positional_embedding"].shape[0] - 1) ** 0.5))
    ref = reference_config("svd_image_encoder.json")
    ref.update(
        hidden_size=hidden, patch_size=patch, image_size=grid * patch,
        num_hidden_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_attention_heads=max(1, hidden // VIT_HEAD_DIM), projection_dim=sd["proj"].shape[1],
    )
    return CLIPVisionConfig(**ref)


def default_image_processor():
    from transformers import CLIPImageProcessor

    from .ldm_layout import reference_config

    return CLIPImageProcessor(**reference_config("clip_image_processor.json"))


def _load(module: torch.nn.Module, sd: Dict[str, torch.Tensor], what: str, path: str) -> torch.nn.Module:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise BadModelFileError(
            f"'{path}': the {what} does not match the SVD layout (missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})."
        )
    return module


def build_from_sgm(sd: Dict[str, torch.Tensor], path: str = "") -> Tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    from .ldm_layout import _strip, infer_ldm_vae_config

    unet_sd = _strip(sd, UNET_PREFIX)
    cfg, lay = unet_config(unet_sd, path)
    unet = UNetSpatioTemporalConditionModel.from_config(cfg)
    _load(unet, unet_keys_to_diffusers(unet_sd, lay["layers_per_block"]), "UNet", path)

    vae_sd = _strip(sd, VAE_PREFIX)
    if not vae_sd:
        raise BadModelFileError(f"'{path}' has no first_stage_model.* (VAE) weights.")
    vcfg = infer_ldm_vae_config(vae_sd, path, reference="svd_vae.json")
    vae = AutoencoderKLTemporalDecoder.from_config(vcfg)
    vsd = vae_keys_to_diffusers(vae_sd, len(vcfg["block_out_channels"]))
    if "quant_conv.weight" not in vsd:  # sgm's AutoencodingEngine has no quant_conv: identity
        c = vae.quant_conv.weight.shape[0]
        vsd["quant_conv.weight"] = torch.eye(c).reshape(c, c, 1, 1)
        vsd["quant_conv.bias"] = torch.zeros(c)
    _load(vae, vsd, "VAE", path)

    clip_sd = _strip(sd, CLIP_PREFIX)
    if not clip_sd:
        raise BadModelFileError(f"'{path}' has no {CLIP_PREFIX}* (CLIP image encoder) weights.")
    enc = CLIPVisionModelWithProjection(clip_vision_config(clip_sd))
    hf = clip_vision_keys_to_hf(clip_sd)
    _load(enc, hf, "CLIP image encoder", path)
    return unet, vae, enc
