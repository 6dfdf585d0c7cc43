"""Implicit video representation (CoDeF-style) and DiffPerformer's refinement loop.

Model: a deformation field ``D(H3(x, y, t))`` (3-D hash grid + MLP, output ÷ 5, levels annealed coarse to fine)
moves each pixel of frame ``t`` to a canonical point; a canonical field ``C(H2((p + 0.3)/1.6))`` (2-D hash grid +
MLP) gives its colour, so every frame is a view of one canonical image — smooth over time by construction.
Coordinates: ``x = (col + ½)/W``, ``y = (row + ½)/H`` in [0, 1] (x first, unlike CoDeF's (y, x)), ``t = (n + 1)/N``.
Defaults follow CoDeF's hash config scaled down for CPU use (16 levels × 2 features, base 16, tables 2^15 / 2^16,
Adam 1e-3, MLP widths 64); see :class:`IVRConfig`.

Losses: L1 to the target video (DiffPerformer) + ``grad_weight``·Sobel-gradient L1 (CoDeF 0.1) + ``flow_weight``·L1
between the canonical points of pixels that the flow says correspond (CoDeF's flow loss, here with the 3-D-aware
human flow) on valid pixels only.  The canonical field can start from the reference image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadInputError
from .hashgrid import HashEncoding


@dataclass
class IVRConfig:
    levels: int = 16
    features: int = 2
    log2_table_canonical: int = 16
    log2_table_deform: int = 15
    base: int = 16
    scale_canonical: float = 1.44
    scale_deform: float = 1.38
    width: int = 64
    deform_layers: int = 3
    canonical_layers: int = 2
    lr: float = 1e-3
    anneal_begin: float = 0.4  # fraction of steps before the deformation hash opens (CoDeF: 4000 of 10000)
    anneal_length: float = 0.4
    pixels_per_step: int = 8192
    grad_weight: float = 0.1
    flow_weight: float = 1.0
    seed: int = 0


def _mlp(i, o, width, layers):
    mods, d = [], i
    for _ in range(layers):
        mods += [nn.Linear(d, width), nn.ReLU(inplace=True)]
        d = width
    mods.append(nn.Linear(d, o))
    return nn.Sequential(*mods)


class IVR(nn.Module):
    def __init__(self, cfg: IVRConfig = IVRConfig()):
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.h_def = HashEncoding(3, cfg.levels, cfg.features, cfg.log2_table_deform, cfg.base, cfg.scale_deform)
        self.h_can = HashEncoding(2, cfg.levels, cfg.features, cfg.log2_table_canonical, cfg.base, cfg.scale_canonical)
        self.deform = _mlp(self.h_def.out_dim + 3, 2, cfg.width, cfg.deform_layers)
        self.canon = _mlp(self.h_can.out_dim + 2, 3, cfg.width, cfg.canonical_layers)
        nn.init.uniform_(self.deform[-1].weight, -1e-4, 1e-4)
        nn.init.zeros_(self.deform[-1].bias)
        self.alpha = 0.0  # annealing of the deformation hash (0 = closed)

    def canonical_points(self, xyt: torch.Tensor) -> torch.Tensor:
        w = self.h_def.annealed(self.alpha).to(xyt.device, xyt.dtype)
        feat = self.h_def(xyt) * w
        return xyt[:, :2] + self.deform(torch.cat([xyt, feat], -1)) / 5.0

    def colour_at(self, pc: torch.Tensor) -> torch.Tensor:
        q = (pc + 0.3) / 1.6
        return self.canon(torch.cat([pc, self.h_can(q)], -1))

    def forward(self, xyt: torch.Tensor):
        pc = self.canonical_points(xyt)
        return self.colour_at(pc), pc

    @torch.no_grad()
    def render(self, frames: int, height: int, width: int, chunk: int = 65536) -> torch.Tensor:
        """(frames, height, width, 3) in 0..1 at any resolution."""
        out = []
        dev = next(self.parameters()).device
        xy = _grid(height, width, dev)
        for n in range(frames):
            t = torch.full((xy.shape[0], 1), (n + 1) / frames, device=dev)
            xyt = torch.cat([xy, t], -1)
            rgb = torch.cat([self(xyt[i:i + chunk])[0] for i in range(0, xyt.shape[0], chunk)])
            out.append(rgb.clamp(0, 1).reshape(height, width, 3))
        return torch.stack(out).cpu()


def _grid(h, w, dev):
    ys, xs = torch.meshgrid((torch.arange(h, device=dev) + 0.5) / h, (torch.arange(w, device=dev) + 0.5) / w, indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2)


def _sobel(img):  # (N, 3, H, W) -> gradient magnitudes of grey
    g = img.mean(1, keepdim=True)
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=img.dtype, device=img.device).view(1, 1, 3, 3) / 8
    return torch.cat([F.conv2d(g, kx, padding=1), F.conv2d(g, kx.transpose(-1, -2), padding=1)], 1)


def fit_ivr(model: IVR, video: torch.Tensor, steps: int, flow: Optional[Dict[str, torch.Tensor]] = None,
            flow_weight: Optional[float] = None, start_step: int = 0, total_steps: Optional[int] = None,
            callback: Optional[Callable[[int, int, float], None]] = None, optimizer=None):
    """Optimise ``model`` toward ``video`` (F, H, W, 3) for ``steps`` steps; returns the optimizer (to continue).

    ``flow``: {"flow": (F−1, H, W, 2) pixels, "valid": (F−1, H, W)} between consecutive frames."""
    cfg = model.cfg
    Fr, H, W, _ = video.shape
    if flow is not None and (flow["flow"].shape[0] != Fr - 1 or tuple(flow["flow"].shape[1:3]) != (H, W)):
        raise BadInputError(f"The flow has shape {tuple(flow['flow'].shape)}; expected ({Fr - 1}, {H}, {W}, 2) for this video.")
    lam = cfg.flow_weight if flow_weight is None else flow_weight
    dev = next(model.parameters()).device
    vid = video.to(dev).float()
    for enc in (model.h_def, model.h_can):  # tcnn's encodings exist before the optimiser is made (trained, not lazy)
        enc.prepare(dev)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8)
    total = total_steps or steps
    g = torch.Generator().manual_seed(cfg.seed + start_step)
    xy_all = _grid(H, W, dev)
    if flow is not None:
        fl = flow["flow"].to(dev).float()
        va = flow["valid"].to(dev).bool()
    for i in range(steps):
        step = start_step + i
        a0, al = cfg.anneal_begin * total, max(cfg.anneal_length * total, 1)
        model.alpha = 0.0 if step < a0 else cfg.levels * min(1.0, (step - a0) / al)
        n = int(torch.randint(Fr, (1,), generator=g))
        pix = torch.randint(H * W, (min(cfg.pixels_per_step, H * W),), generator=g).to(dev)
        xyt = torch.cat([xy_all[pix], torch.full((pix.shape[0], 1), (n + 1) / Fr, device=dev)], -1)
        rgb, pc = model(xyt)
        target = vid[n].reshape(-1, 3)[pix]
        loss = (rgb - target).abs().mean()
        if cfg.grad_weight and i % 4 == 0:  # Sobel term on a whole (small) frame every few steps
            full = torch.cat([xy_all, torch.full((H * W, 1), (n + 1) / Fr, device=dev)], -1)
            img = model(full)[0].reshape(1, H, W, 3).permute(0, 3, 1, 2)
            loss = loss + cfg.grad_weight * (_sobel(img) - _sobel(vid[n:n + 1].permute(0, 3, 1, 2))).abs().mean()
        if flow is not None and lam and n < Fr - 1:
            v = va[n].reshape(-1)[pix]
            if v.any():
                p = xyt[v]
                f = fl[n].reshape(-1, 2)[pix][v] / torch.tensor([W, H], device=dev, dtype=p.dtype)
                q = torch.cat([p[:, :2] + f, torch.full((p.shape[0], 1), (n + 2) / Fr, device=dev)], -1)
                loss = loss + lam * (model.canonical_points(q) - pc[v]).abs().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback:
            callback(step + 1, total, float(loss.detach()))
    return opt


def init_canonical(model: IVR, image: torch.Tensor, steps: int = 200):
    """Start the canonical field from the reference image (identity deformation, CoDeF's reference loss)."""
    H, W, _ = image.shape
    dev = next(model.parameters()).device
    xy = _grid(H, W, dev)
    tgt = image.to(dev).float().reshape(-1, 3)
    opt = torch.optim.Adam(list(model.canon.parameters()) + list(model.h_can.parameters()), lr=model.cfg.lr)
    for _ in range(steps):
        loss = (model.colour_at(xy) - tgt).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------- Algorithm 1


@dataclass
class LoopSettings:
    total_steps: int = 2000
    refresh_every: int = 500
    strength_start: float = 0.5
    strength_end: float = 0.2
    flow_weight: float = 1.0
    init_steps: int = 100


def strength_schedule(ls: LoopSettings) -> List[float]:
    """The noise strength of each refresh: linear from ``strength_start`` to ``strength_end``."""
    n = max(1, -(-ls.total_steps // ls.refresh_every))
    if n == 1:
        return [ls.strength_start]
    return [ls.strength_start + (ls.strength_end - ls.strength_start) * i / (n - 1) for i in range(n)]


def refine_loop(video: torch.Tensor, regenerate: Callable[[torch.Tensor, float, int], torch.Tensor], ls: LoopSettings,
                flow: Optional[Dict[str, torch.Tensor]] = None, reference: Optional[torch.Tensor] = None,
                cfg: IVRConfig = IVRConfig(), callback: Optional[Callable[[int, int], None]] = None,
                stop_exceptions=(), device=None):
    """DiffPerformer's loop: V_p ← video; repeat: fit IVR to V_p for ``refresh_every`` steps, V_s = render(IVR),
    V_p = regenerate(V_s, strength, round) (noise V_s's latent to ``strength`` and re-denoise with pose guidance).

    Returns (refined V_p, smoothed V_s, previews per refresh, strengths used).  An exception in
    ``stop_exceptions`` raised by ``callback`` stops the loop and returns the best so far."""
    Fr, H, W, _ = video.shape
    model = IVR(cfg).to(device or "cpu")
    if reference is not None:
        ref = reference[0] if reference.ndim == 4 else reference
        if tuple(ref.shape[:2]) != (H, W):
            ref = F.interpolate(ref.permute(2, 0, 1)[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        init_canonical(model, ref, ls.init_steps)
    strengths = strength_schedule(ls)
    vp, vs = video.float(), video.float()
    previews, used = [], []
    opt = None
    step = 0
    try:
        for r, s in enumerate(strengths):
            n = min(ls.refresh_every, ls.total_steps - step)
            cb = (lambda i, t, l: callback(i, t)) if callback else None
            opt = fit_ivr(model, vp, n, flow, ls.flow_weight, start_step=step, total_steps=ls.total_steps, callback=cb, optimizer=opt)
            step += n
            vs = model.render(Fr, H, W)  # on the CPU
            previews.append(vs)
            vp = regenerate(vs, s, r).float()
            used.append(s)
    except stop_exceptions:
        pass
    return vp, vs, previews, used
