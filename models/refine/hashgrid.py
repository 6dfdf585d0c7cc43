"""Multiresolution hash encoding (Instant-NGP) in pure PyTorch, with an optional tinycudann backend.

Conventions follow tiny-cuda-nn's HashGrid so both backends compute the same function: level ``l`` scales inputs
by ``s_l = base · scale^l − 1`` and offsets them by ½ (``pos = x·s_l + ½``), has ``R_l = ⌈s_l⌉ + 1`` grid points per
axis, is indexed densely (``Σ c_i·R_l^i``) when ``R_l^d`` fits in the table, and otherwise hashes corners with the
Instant-NGP primes (XOR of ``c_i · π_i`` modulo the table size).  Features are interpolated (bi/trilinear)
from the ``2^d`` corners.  All levels are computed in one vectorised pass.  Inputs are in [0, 1]^d.

``annealed(alpha)`` gives CoDeF's coarse-to-fine weights per level: ``(1 − cos(π·clamp(α − l, 0, 1)))/2``.

When ``tinycudann`` is importable and the module is on a CUDA device, ``backend="auto"`` uses tcnn's HashGrid
with the same configuration (its table layout differs, so weights do not transfer between backends).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

PRIMES = (1, 2654435761, 805459861)


def _tcnn():
    try:
        import tinycudann  # noqa: F401

        return tinycudann
    except Exception:  # noqa: BLE001
        return None


class HashEncoding(nn.Module):
    def __init__(self, dims: int = 2, levels: int = 16, features: int = 2, log2_table: int = 19, base: int = 16,
                 scale: Optional[float] = None, finest: Optional[int] = None, init_std: float = 1e-4, backend: str = "auto"):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError("HashEncoding supports 2-D and 3-D inputs.")
        if scale is None:
            scale = math.exp((math.log(finest) - math.log(base)) / max(levels - 1, 1)) if finest else 1.5
        self.dims, self.levels, self.features, self.T = dims, levels, features, 2 ** log2_table
        self.base, self.scale = base, float(scale)
        scales = [base * self.scale ** l - 1.0 for l in range(levels)]
        res = [int(math.ceil(sc)) + 1 for sc in scales]
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float64), persistent=False)
        self.register_buffer("res", torch.tensor(res, dtype=torch.long), persistent=False)
        dense = [r ** dims <= self.T for r in res]
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.table = nn.Parameter(torch.empty(levels, self.T, features).uniform_(-init_std, init_std))
        corners = torch.tensor([[(c >> i) & 1 for i in range(dims)] for c in range(2 ** dims)], dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)
        self.backend = backend
        self._tcnn_enc = None

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def _use_tcnn(self, x) -> bool:
        return self.uses_tcnn_on(x.device)

    def uses_tcnn_on(self, device) -> bool:
        return self.backend in ("auto", "tcnn") and torch.device(device).type == "cuda" and _tcnn() is not None

    def prepare(self, device) -> "HashEncoding":
        """Build the tcnn encoding now when it will be used on ``device``, so its parameters exist (as a submodule)
        before an optimiser is made over ``parameters()``; built lazily in ``forward`` they would never be trained."""
        if self._tcnn_enc is None and self.uses_tcnn_on(device):
            self._tcnn_enc = self._make_tcnn().to(device)
        return self

    def _make_tcnn(self):
        return _tcnn().Encoding(self.dims, {"otype": "HashGrid", "n_levels": self.levels, "n_features_per_level": self.features,
                                            "log2_hashmap_size": int(math.log2(self.T)), "base_resolution": self.base,
                                            "per_level_scale": self.scale})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (P, dims) in [0, 1] -> (P, levels·features)."""
        if self._use_tcnn(x):
            return self._forward_tcnn(x)
        if self.backend == "tcnn":
            raise RuntimeError("backend='tcnn' needs tinycudann and a CUDA device.")
        P = x.shape[0]
        pos = x.clamp(0, 1)[:, None, :] * self.scales[None, :, None].to(x.dtype) + 0.5  # (P, L, d)
        lo = pos.floor().long()
        frac = pos - lo  # (P, L, d)
        c = lo[:, :, None, :] + self.corners[None, None]  # (P, L, 2^d, d)
        # dense index
        stride = self.res  # (L,)
        dense_idx = c[..., 0] + c[..., 1] * stride[None, :, None]
        if self.dims == 3:
            dense_idx = dense_idx + c[..., 2] * (stride * stride)[None, :, None]
        # hashed index (XOR of coordinate × prime), computed in int64
        h = c[..., 0] * PRIMES[0]
        for i in range(1, self.dims):
            h = torch.bitwise_xor(h, c[..., i] * PRIMES[i])
        idx = torch.where(self.dense[None, :, None], dense_idx, h) % self.T  # (P, L, 2^d)
        # interpolation weights
        w = torch.where(self.corners[None, None].bool(), frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)  # (P, L, 2^d)
        flat = (idx + torch.arange(self.levels, device=x.device)[None, :, None] * self.T).reshape(-1)
        feats = self.table.reshape(-1, self.features)[flat].reshape(P, self.levels, -1, self.features)
        out = (feats * w[..., None].to(feats.dtype)).sum(2)  # (P, L, F)
        return out.reshape(P, -1)

    def _forward_tcnn(self, x):
        self.prepare(x.device)
        return self._tcnn_enc(x.clamp(0, 1)).float()

    def annealed(self, alpha: float) -> torch.Tensor:
        """(levels·features,) weights opening the levels coarse to fine as ``alpha`` goes 0 → levels."""
        j = torch.arange(self.levels, dtype=torch.float32)
        w = (1 - torch.cos(math.pi * (alpha - j).clamp(0, 1))) / 2
        return w.repeat_interleave(self.features)
