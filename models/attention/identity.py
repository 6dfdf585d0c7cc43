"""Identity through decoupled cross-attention (IP-Adapter / VividPose style).

The adapter turns a CLIP image embedding into ``num_image_tokens`` tokens (SD1.5; SVD already feeds
CLIP to its own cross-attention) and an ArcFace embedding into ``num_face_tokens`` tokens.  These
tokens are appended to the UNet's context; every cross-attention layer gets a
:class:`DecoupledCrossAttnProcessor` that splits the context back into ``[base | image | face]`` and
computes::

    out = Attn(q, K(base), V(base)) + s_img·Attn(q, K_img(image), V_img(image)) + s_face·Attn(q, K_face(face), V_face(face))

with an extra, trainable K/V projection pair per layer for each token kind (initialised as copies of
the layer's own ``to_k``/``to_v``, as IP-Adapter's training does).  The unconditional branch uses the
projections of zero embeddings.  Weights load from and save to safetensors with the config in the
metadata (``performer.kind = identity_adapter``).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadInputError
from . import maths as AM
from .reference import patched_processors


def _key(name: str) -> str:
    return name.replace(".", "__")


def cross_attention_layers(unet: nn.Module) -> Dict[str, nn.Module]:
    """Module name → Attention for every cross-attention (``attn2``) layer."""
    out = {}
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            mod = unet.get_submodule(name[: -len(".processor")])
            if getattr(mod, "is_cross_attention", False):  # AnimateDiff's attn2 is temporal *self*-attention
                out[name[: -len(".processor")]] = mod
    return out


class PerceiverAttention(nn.Module):
    """IP-Adapter plus's resampler attention: the queries (learnt latents) attend to [image tokens, latents], both
    LayerNorm'd; one K/V projection ``to_kv`` (keys then values), no biases."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        from .maths import attention

        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], 1)).chunk(2, dim=-1)
        return self.to_out(attention(self.to_q(latents), k, v, self.heads))


class Resampler(nn.Module):
    """IP-Adapter plus's image projection: ``num_queries`` learnt latents read the CLIP vision model's penultimate
    hidden states through ``depth`` perceiver layers (attention + GELU feed-forward, both residual), then a linear
    projection and a LayerNorm give the image tokens."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, num_queries: int, embedding_dim: int,
                 output_dim: int, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                                         nn.Linear(dim * ff_mult, dim, bias=False))])
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lat = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            lat = attn(x, lat) + lat
            lat = ff(lat) + lat
        return self.norm_out(self.proj_out(lat))


class IdentityAdapter(nn.Module):
    def __init__(self, layers: Dict[str, list], cross_dim: int, clip_dim: int = 0, num_image_tokens: int = 4,
                 face_dim: int = 512, num_face_tokens: int = 4, resampler: Optional[Dict[str, int]] = None):
        super().__init__()
        self.config = dict(layers={k: list(v) for k, v in layers.items()}, cross_dim=int(cross_dim), clip_dim=int(clip_dim),
                           num_image_tokens=int(num_image_tokens) if clip_dim else 0, face_dim=int(face_dim),
                           num_face_tokens=int(num_face_tokens))
        if resampler:  # IP-Adapter plus: image tokens from CLIP hidden states (batch, tokens, clip_dim)
            self.config["resampler"] = {k: int(v) for k, v in resampler.items()}
        c = self.config
        self.image_proj = None
        if c["clip_dim"] and resampler:
            r = c["resampler"]
            self.image_proj = Resampler(r["dim"], r["depth"], r["heads"], r["dim_head"], c["num_image_tokens"],
                                        c["clip_dim"], cross_dim, r["ff_mult"])
            self.image_norm = None
        elif c["clip_dim"]:
            self.image_proj = nn.Sequential(nn.Linear(c["clip_dim"], c["num_image_tokens"] * cross_dim))
            self.image_norm = nn.LayerNorm(cross_dim)
        self.face_proj = None  # no face tokens (e.g. a plain IP-Adapter file): no face part at all
        if c["num_face_tokens"]:
            self.face_proj = nn.Sequential(nn.Linear(face_dim, face_dim * 2), nn.GELU(),
                                           nn.Linear(face_dim * 2, num_face_tokens * cross_dim))
            self.face_norm = nn.LayerNorm(cross_dim)
        if not c["num_image_tokens"] and not c["num_face_tokens"]:
            raise BadInputError("An identity adapter needs CLIP-image tokens, face tokens or both.")
        kv = {}
        for name, (in_dim, out_dim) in c["layers"].items():
            for kind in self.kinds:
                kv[_key(name) + f"__k_{kind}"] = nn.Linear(in_dim, out_dim, bias=False)
                kv[_key(name) + f"__v_{kind}"] = nn.Linear(in_dim, out_dim, bias=False)
        self.kv = nn.ModuleDict(kv)

    @property
    def kinds(self) -> tuple:
        """The token kinds this adapter has K/V pairs for: ``img`` (CLIP image), ``face`` (ArcFace)."""
        c = self.config
        return tuple(k for k, n in (("img", c["num_image_tokens"]), ("face", c["num_face_tokens"])) if n)

    @classmethod
    def for_unet(cls, unet: nn.Module, clip_dim: int = 0, **kw) -> "IdentityAdapter":
        """A fresh adapter for ``unet`` whose K/V pairs start as copies of each layer's own ``to_k``/``to_v``."""
        layers = cross_attention_layers(unet)
        if not layers:
            raise BadInputError("This UNet has no cross-attention layers for an identity adapter.")
        dims = {n: [a.to_k.in_features, a.to_k.out_features] for n, a in layers.items()}
        cross = {d[0] for d in dims.values()}
        if len(cross) != 1:
            raise BadInputError(f"Cross-attention layers disagree on context width: {sorted(cross)}.")
        ad = cls(dims, cross.pop(), clip_dim, **kw)
        with torch.no_grad():
            for n, a in layers.items():
                for kind in ad.kinds:
                    ad.kv[_key(n) + f"__k_{kind}"].weight.copy_(a.to_k.weight)
                    ad.kv[_key(n) + f"__v_{kind}"].weight.copy_(a.to_v.weight)
        return ad

    @property
    def reads_hidden_states(self) -> bool:
        """Whether the CLIP-image tokens come from CLIP's penultimate hidden states (IP-Adapter plus) rather than its
        projected image embedding."""
        return "resampler" in self.config

    @property
    def num_tokens(self) -> int:
        return self.config["num_image_tokens"] + self.config["num_face_tokens"]

    def tokens(self, clip_embeds: Optional[torch.Tensor], face_embeds: Optional[torch.Tensor], batch: int = 1) -> torch.Tensor:
        """(batch, num_image_tokens + num_face_tokens, cross_dim); a missing embedding counts as zeros (= unconditional)."""
        c = self.config
        p = next(self.parameters())
        parts = []
        if self.image_proj is not None and self.reads_hidden_states:
            if clip_embeds is None or clip_embeds.ndim != 3 or clip_embeds.shape[-1] != c["clip_dim"]:
                raise BadInputError(f"This identity adapter (IP-Adapter plus) reads CLIP's penultimate hidden states "
                                    f"(batch, tokens, {c['clip_dim']}); got "
                                    f"{None if clip_embeds is None else tuple(clip_embeds.shape)}.")
            parts.append(self.image_proj(clip_embeds.to(p.device, p.dtype)))
        elif self.image_proj is not None:
            x = clip_embeds if clip_embeds is not None else torch.zeros(batch, c["clip_dim"])
            if x.shape[-1] != c["clip_dim"]:
                raise BadInputError(f"CLIP embedding has width {x.shape[-1]}; this identity adapter expects {c['clip_dim']}.")
            parts.append(self.image_norm(self.image_proj(x.to(p.device, p.dtype)).view(x.shape[0], c["num_image_tokens"], c["cross_dim"])))
        if self.face_proj is not None:
            f = face_embeds if face_embeds is not None else torch.zeros(batch, c["face_dim"])
            if f.shape[-1] != c["face_dim"]:
                raise BadInputError(f"Face embedding has width {f.shape[-1]}; this identity adapter expects {c['face_dim']}.")
            parts.append(self.face_norm(self.face_proj(f.to(p.device, p.dtype)).view(f.shape[0], c["num_face_tokens"], c["cross_dim"])))
        return torch.cat(parts, 1)

    def save(self, path: str, extra_metadata: Optional[Dict[str, str]] = None) -> None:
        from ..backbones.weights import write_performer_file

        write_performer_file(self, path, "identity_adapter", self.config, extra_metadata)


def warn_if_silent(adapter: IdentityAdapter, what: str) -> bool:
    """A visible warning, and True, when every key/value projection of the adapter is all zeros: its tokens would add
    nothing (an adapter never trained from a zero start), so identity guidance would be ignored."""
    import logging

    silent = all(not m.weight.detach().any() for m in adapter.kv.values())
    if silent:
        logging.warning("%s: every key/value projection is all zeros, so the identity tokens add nothing and the "
                        "identity guidance is ignored. Load trained weights.", what)
    return silent


def load_identity_adapter(path: str, device=None, dtype=torch.float32) -> IdentityAdapter:
    """An identity adapter file the pack wrote (safetensors with ``performer.kind = identity_adapter``), or a released
    SD1.5 IP-Adapter file (``ip-adapter_sd15.safetensors``, ``ip-adapter-faceid_sd15.bin``: :mod:`.ip_adapter`)."""
    from ..backbones.weights import load_performer_module, read_state_dict
    from ..errors import BadModelFileError
    from .ip_adapter import is_ip_adapter

    if not _is_pack_file(path):
        state = read_state_dict(path)
        if not is_ip_adapter(state):
            raise BadModelFileError(f"{path} is neither a Performer identity adapter (safetensors with performer.kind = "
                                    "identity_adapter) nor an IP-Adapter file (image_proj.* and ip_adapter.* keys); it "
                                    f"holds keys such as {sorted(state)[:3]}.")
        return from_ip_adapter(state, path).to(device or "cpu", dtype)
    return load_performer_module(IdentityAdapter, path, "identity_adapter", "identity adapter", device, dtype)


def from_ip_adapter(state: Dict[str, torch.Tensor], path: str = "") -> IdentityAdapter:
    """The identity adapter holding a released SD1.5 IP-Adapter file's weights (:mod:`.ip_adapter`)."""
    from ..errors import BadModelFileError
    from .ip_adapter import convert_ip_adapter

    cfg, sd = convert_ip_adapter(state, path)
    ad = IdentityAdapter(**cfg)
    try:
        ad.load_state_dict(sd)
    except RuntimeError as e:
        raise BadModelFileError(f"{path}: the IP-Adapter weights do not fit: {e}") from e
    return ad.eval().requires_grad_(False)


def _is_pack_file(path: str) -> bool:
    if not path.endswith(".safetensors"):
        return False
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return "performer.kind" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: read_state_dict names the file and the reason
        return False


class DecoupledCrossAttnProcessor:
    def __init__(self, name: str, adapter: IdentityAdapter, scales: Dict[str, float]):
        self.name, self.adapter, self.scales = name, adapter, scales

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise BadInputError(f"Decoupled cross-attention at {self.name} needs a context.")
        c = self.adapter.config
        n_img, n_face = c["num_image_tokens"], c["num_face_tokens"]
        n_base = encoder_hidden_states.shape[1] - n_img - n_face
        if n_base < 1:
            raise BadInputError(f"The context at {self.name} has {encoder_hidden_states.shape[1]} tokens; "
                                f"expected base tokens plus {n_img + n_face} identity tokens.")
        residual = hidden_states
        ctx = encoder_hidden_states
        base, img, face = ctx[:, :n_base], ctx[:, n_base:n_base + n_img], ctx[:, n_base + n_img:]
        if attn.norm_cross:
            base = attn.norm_encoder_hidden_states(base)
        q = attn.to_q(hidden_states)
        key, kv = _key(self.name), self.adapter.kv
        extra = []
        if n_img:
            extra.append((kv[key + "__k_img"](img), kv[key + "__v_img"](img), self.scales.get("image", 1.0)))
        if n_face:
            extra.append((kv[key + "__k_face"](face), kv[key + "__v_face"](face), self.scales.get("face", 1.0)))
        out = AM.decoupled_cross_attention(q, attn.to_k(base), attn.to_v(base), attn.heads, extra)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def identity_attention(unet: nn.Module, adapter: IdentityAdapter, image_scale: float = 1.0,
                       face_scale: float = 1.0) -> Iterator[None]:
    """Install decoupled cross-attention on every ``attn2`` of ``unet``; originals restored on exit."""
    layers = set(adapter.config["layers"])
    missing = [n for n in cross_attention_layers(unet) if n not in layers]
    if missing:
        raise BadInputError(f"The identity adapter was made for another UNet: it lacks layers such as {missing[0]}.")
    scales = {"image": float(image_scale), "face": float(face_scale)}

    targets = {n + ".processor" for n in cross_attention_layers(unet)}

    def make(name, proc):
        if name in targets:
            return DecoupledCrossAttnProcessor(name[: -len(".processor")], adapter, scales)
        return None

    with patched_processors(unet, make):
        yield
