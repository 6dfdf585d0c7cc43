"""Released IP-Adapter files (SD1.5) read into the pack's :class:`~.identity.IdentityAdapter`.

IP-Adapter is the decoupled cross-attention VividPose's identity branch builds on, and the pack's adapter has the same
parts, so the released weights map one to one (key names and shapes recorded in ``tests/data/released_layouts/``, with
their sources):

* ``ip-adapter_sd15.safetensors`` (plain, CLIP ViT-H image embedding): ``image_proj.proj`` (1024 → 4 × 768) and
  ``image_proj.norm`` → the adapter's CLIP-image tokens (``image_proj.0`` / ``image_norm``); ``ip_adapter.N.to_k_ip`` /
  ``to_v_ip`` → each cross-attention layer's image K/V pair.
* ``ip-adapter-faceid_sd15.bin`` (ArcFace embedding): ``image_proj.proj.0`` (512 → 1024), GELU, ``proj.2``
  (1024 → 4 × 768) and ``norm`` → the adapter's face tokens (``face_proj.0/.2`` / ``face_norm``); ``to_k_ip`` /
  ``to_v_ip`` → the face K/V pairs.  The file also holds rank-128 LoRA weights for the UNet's attention
  (``to_q_lora`` …); the adapter does not apply them, and says so: FaceID's authors ship the same LoRA as
  ``ip-adapter-faceid_sd15_lora.safetensors`` for ComfyUI's LoRA loaders.
* ``ip-adapter-plus_sd15.safetensors`` / ``ip-adapter-plus-face_sd15.safetensors``: ``image_proj`` is a perceiver
  resampler (16 learnt queries reading the CLIP ViT-H penultimate hidden states through 4 layers) → the adapter's
  :class:`~.identity.Resampler` under the same names; ``to_k_ip`` / ``to_v_ip`` as for the plain file.

``N`` is the position of the layer's processor in diffusers' ``UNet2DConditionModel.attn_processors`` — every attention
layer counted, self- and cross-, in the order down blocks, **up blocks, then the mid block** (the order the modules are
registered in) — so the cross-attention layers are the odd ``N`` = 1, 3, …, 31 on SD1.5.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Tuple

import torch

from ..errors import BadModelFileError

# SD1.5's UNet (block_out_channels 320, 640, 1280, 1280; two transformer layers per down level with attention, three per
# up level, one in the mid block; one attn1 + attn2 per transformer)
SD15_CHANNELS = (320, 640, 1280, 1280)
SD15_CROSS_DIM = 768


def sd15_cross_attention_order() -> List[Tuple[str, int]]:
    """(diffusers name of each SD1.5 cross-attention layer, its width), in ``attn_processors`` order: layer k of this
    list is processor N = 2k + 1 (its self-attention is 2k)."""
    out = []
    for i in range(3):  # down_blocks.0–2 have attention; down_blocks.3 does not
        out += [(f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn2", SD15_CHANNELS[i]) for j in range(2)]
    rev = list(reversed(SD15_CHANNELS))
    for i in range(1, 4):  # up_blocks.0 has no attention
        out += [(f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn2", rev[i]) for j in range(3)]
    out.append(("mid_block.attentions.0.transformer_blocks.0.attn2", SD15_CHANNELS[-1]))
    return out


def is_ip_adapter(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("image_proj.") for k in state) and any(k.startswith("ip_adapter.") for k in state)


def ip_adapter_kind(state: Dict[str, torch.Tensor], path: str = "") -> str:
    """``plain`` (ImageProjModel), ``plus`` (perceiver resampler: plus and plus-face), ``faceid`` (MLP projection of an
    ArcFace embedding); other IP-Adapter kinds refused."""
    if "image_proj.latents" in state:
        if any(k.startswith("image_proj.") and ("perceiver" in k or "pos_emb" in k or "to_latents" in k) for k in state):
            raise BadModelFileError(f"{path}: an IP-Adapter resampler with parts SD1.5 plus files do not have "
                                    "(FaceID plus / portrait variants); not supported.")
        return "plus"
    if {"image_proj.proj.weight", "image_proj.norm.weight"} <= set(state):
        return "plain"
    if {"image_proj.proj.0.weight", "image_proj.proj.2.weight", "image_proj.norm.weight"} <= set(state):
        return "faceid"
    raise BadModelFileError(f"{path}: an image_proj of an unknown IP-Adapter kind (keys "
                            f"{sorted(k for k in state if k.startswith('image_proj.'))[:6]}); expected ip-adapter_sd15 "
                            "(image_proj.proj / norm) or ip-adapter-faceid_sd15 (image_proj.proj.0 / proj.2 / norm).")


def _key(name: str) -> str:  # the identity adapter's K/V module naming (identity._key)
    return name.replace(".", "__")


def convert_ip_adapter(state: Dict[str, torch.Tensor], path: str = "") -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(the identity adapter's config, its state dict) holding a released SD1.5 IP-Adapter file's weights (plain or
    FaceID); :func:`.identity.from_ip_adapter` builds the module.  Shapes are checked against SD1.5's layers; a file
    for another UNet (SDXL: 2048-wide context, 70 layers) is refused with the file named."""
    kind = ip_adapter_kind(state, path)
    order = sd15_cross_attention_order()
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"ip_adapter\.(\d+)\.to_k_ip\.weight$", k))})
    want = [2 * k + 1 for k in range(len(order))]
    if ids != want:
        raise BadModelFileError(f"{path}: IP-Adapter K/V pairs at processors {ids[:4]}…{ids[-2:]} ({len(ids)}); an SD1.5 "
                                f"IP-Adapter has them at 1, 3, …, {want[-1]} ({len(want)}). Is it for another model (SDXL)?")
    layers = {}
    for (name, width), n in zip(order, want):
        for p in ("k", "v"):
            w = state[f"ip_adapter.{n}.to_{p}_ip.weight"]
            if tuple(w.shape) != (width, SD15_CROSS_DIM):
                raise BadModelFileError(f"{path}: ip_adapter.{n}.to_{p}_ip.weight is {tuple(w.shape)}; SD1.5's {name} needs "
                                        f"({width}, {SD15_CROSS_DIM}).")
        layers[name] = [SD15_CROSS_DIM, width]
    if kind == "plus":
        need = ("image_proj.latents", "image_proj.proj_in.weight", "image_proj.proj_out.weight", "image_proj.norm_out.weight")
        if not all(k in state for k in need):
            raise BadModelFileError(f"{path}: an IP-Adapter plus / plus-face resampler without "
                                    f"{[k for k in need if k not in state]}; the file is incomplete.")
        lat, pin = state["image_proj.latents"], state["image_proj.proj_in.weight"]
        depth = len({m.group(1) for k in state if (m := re.match(r"image_proj\.layers\.(\d+)\.", k))})
        dim = lat.shape[-1]
        q = state.get("image_proj.layers.0.0.to_q.weight")
        ff = state.get("image_proj.layers.0.1.1.weight")
        if q is None or ff is None or not depth or pin.shape[0] != dim or state["image_proj.proj_out.weight"].shape[0] != SD15_CROSS_DIM:
            raise BadModelFileError(f"{path}: an IP-Adapter resampler that does not fit SD1.5 plus (latents "
                                    f"{tuple(lat.shape)}, proj_in {tuple(pin.shape)}).")
        res = dict(dim=dim, depth=depth, heads=q.shape[0] // 64, dim_head=64, ff_mult=ff.shape[0] // dim)
        cfg = dict(layers=layers, cross_dim=SD15_CROSS_DIM, clip_dim=pin.shape[1], num_image_tokens=lat.shape[1],
                   num_face_tokens=0, resampler=res)
        sd = {k: v for k, v in state.items() if k.startswith("image_proj.")}
        suffix = "img"
    elif kind == "plain":
        proj = state["image_proj.proj.weight"]
        tokens, rem = divmod(proj.shape[0], SD15_CROSS_DIM)
        if rem:
            raise BadModelFileError(f"{path}: image_proj.proj.weight is {tuple(proj.shape)}; its rows must be tokens × 768.")
        cfg = dict(layers=layers, cross_dim=SD15_CROSS_DIM, clip_dim=proj.shape[1], num_image_tokens=tokens, num_face_tokens=0)
        sd = {"image_proj.0.weight": proj, "image_proj.0.bias": state["image_proj.proj.bias"],
              "image_norm.weight": state["image_proj.norm.weight"], "image_norm.bias": state["image_proj.norm.bias"]}
        suffix = "img"
    else:
        p0, p2 = state["image_proj.proj.0.weight"], state["image_proj.proj.2.weight"]
        tokens, rem = divmod(p2.shape[0], SD15_CROSS_DIM)
        if rem or p0.shape[0] != p2.shape[1] or p0.shape[0] != 2 * p0.shape[1]:
            raise BadModelFileError(f"{path}: FaceID projection {tuple(p0.shape)} → {tuple(p2.shape)} does not fit "
                                    "512 → 1024 → tokens × 768.")
        cfg = dict(layers=layers, cross_dim=SD15_CROSS_DIM, clip_dim=0, face_dim=p0.shape[1], num_face_tokens=tokens)
        sd = {"face_proj.0.weight": p0, "face_proj.0.bias": state["image_proj.proj.0.bias"],
              "face_proj.2.weight": p2, "face_proj.2.bias": state["image_proj.proj.2.bias"],
              "face_norm.weight": state["image_proj.norm.weight"], "face_norm.bias": state["image_proj.norm.bias"]}
        suffix = "face"
        if any("_lora." in k for k in state):
            logging.warning("%s: FaceID's LoRA for the UNet's attention is in this file but the identity adapter does not "
                            "apply it; load ip-adapter-faceid_sd15_lora.safetensors with a LoRA loader on the same model.",
                            path)
    for (name, _), n in zip(order, want):
        sd[f"kv.{_key(name)}__k_{suffix}.weight"] = state[f"ip_adapter.{n}.to_k_ip.weight"]
        sd[f"kv.{_key(name)}__v_{suffix}.weight"] = state[f"ip_adapter.{n}.to_v_ip.weight"]
    used = {k for k in state if k.startswith("image_proj.") or re.match(r"ip_adapter\.\d+\.to_[kv]_ip\.weight$", k)}
    extra = sorted(k for k in state if k not in used and not (kind == "faceid" and "_lora." in k))
    if extra:
        raise BadModelFileError(f"{path}: keys an SD1.5 IP-Adapter {kind} file does not have, e.g. {extra[:3]}; it "
                                "would be loaded only in part.")
    return cfg, {k: v.float() for k, v in sd.items()}
