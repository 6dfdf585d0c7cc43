"""Architecture from checkpoint shapes: LDM / sgm UNet layout, VAE and CLIP text configs inferred from tensor
shapes over the reference configs in ``models/backbones/configs/``.  Used by the loaders (:mod:`.backbones`) and the SVD
converter (:mod:`.convert_svd`); it imports neither, so the two do not import each other."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, List

import torch

from ..errors import BadModelFileError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def reference_config(name: str) -> Dict[str, Any]:
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as fh:
        return json.load(fh)


def _strip(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _indices(keys: Iterable[str], pattern: str) -> List[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _require(sd, key, path, what):
    if key not in sd:
        raise BadModelFileError(f"'{path}' is missing '{key}': not a complete {what} checkpoint.")
    return sd[key]


# ----------------------------------------------------------------------------- LDM UNet shapes


def infer_ldm_unet_layout(sd: Dict[str, torch.Tensor], path: str = "") -> Dict[str, Any]:
    """Architecture of an LDM/sgm UNet from its (prefix-stripped) state dict."""
    conv_in = _require(sd, "input_blocks.0.0.weight", path, "UNet")
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    out_channels = _require(sd, "out.2.weight", path, "UNet").shape[0]
    blocks = _indices(sd, r"input_blocks\.(\d+)\.")
    downs = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in sd]
    levels = len(downs) + 1
    layers = (len(blocks) - 1 - len(downs)) // levels
    mult, attn, depth = [], [], 1
    for lvl in range(levels):
        first = 1 + lvl * (layers + 1)
        mult.append(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0] // model_channels)
        tb = _indices(sd, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        attn.append(bool(tb))
        if tb:
            depth = len(tb)
    k = next((k for k in sd if k.endswith("attn2.to_k.weight") and "time_stack" not in k), None)
    proj = next((v for k, v in sd.items() if k.endswith(".1.proj_in.weight")), None)
    return dict(
        model_channels=model_channels,
        in_channels=in_channels,
        out_channels=out_channels,
        channel_mult=mult,
        layers_per_block=layers,
        attention=attn,
        transformer_depth=depth,
        context_dim=None if k is None else sd[k].shape[1],
        linear_proj=proj is not None and proj.ndim == 2,
        adm_in_channels=sd["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in sd else None,
    )


def infer_ldm_vae_config(sd: Dict[str, torch.Tensor], path: str = "", reference: str = "sd15_vae.json") -> Dict[str, Any]:
    conv_in = _require(sd, "encoder.conv_in.weight", path, "VAE")
    ch = conv_in.shape[0]
    downs = _indices(sd, r"encoder\.down\.(\d+)\.")
    layers = len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    mult = [sd[f"encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0] // ch for i in downs]
    cfg = reference_config(reference)
    cfg.update(
        in_channels=conv_in.shape[1],
        out_channels=_require(sd, "decoder.conv_out.weight", path, "VAE").shape[0],
        block_out_channels=[ch * m for m in mult],
        layers_per_block=layers,
        latent_channels=sd["decoder.conv_in.weight"].shape[1],
        down_block_types=[cfg["down_block_types"][0]] * len(mult),
    )
    if "up_block_types" in cfg:
        cfg["up_block_types"] = [cfg["up_block_types"][0]] * len(mult)
    if "norm_num_groups" in cfg:
        cfg["norm_num_groups"] = min(cfg["norm_num_groups"], ch)
    return cfg


def infer_clip_text_config(sd: Dict[str, torch.Tensor], path: str = ""):
    from transformers import CLIPTextConfig

    tok = _require(sd, "embeddings.token_embedding.weight", path, "CLIP text encoder")
    hidden = tok.shape[1]
    ref = reference_config("sd15_text_encoder.json")
    ref.update(
        vocab_size=tok.shape[0],
        hidden_size=hidden,
        max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
        num_hidden_layers=len(_indices(sd, r"encoder\.layers\.(\d+)\.")),
        intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        # Head count is not stored in the weights; SD1.5's encoder uses 64-d heads.
        num_attention_heads=max(1, hidden // 64),
    )
    return CLIPTextConfig(**ref)
