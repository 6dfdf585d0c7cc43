"""IVR refinement: smoothing a flickering video, the flow loss, and the loop on the tiny AnimateDiff pipe."""

import pytest
import torch

from performer_pkg.models.refine.ivr import IVR, IVRConfig, LoopSettings, _grid, fit_ivr, refine_loop, strength_schedule
from performer_pkg.models.evaluate.metrics import warp_error

SMALL = dict(log2_table_canonical=12, log2_table_deform=12, levels=8, base=4, pixels_per_step=1024)


def moving_video(F=8, H=32, W=32, dx=1.0):
    """A smooth texture sliding right by dx px per frame, and its exact flow (valid except where it enters)."""
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    out = []
    for n in range(F):
        x = xs - dx * n
        out.append(torch.stack([0.5 + 0.4 * torch.sin(x / 5), 0.5 + 0.4 * torch.cos(ys / 6), 0.5 + 0.3 * torch.sin((x + ys) / 7)], -1))
    flow = torch.zeros(F - 1, H, W, 2)
    flow[..., 0] = dx
    valid = torch.ones(F - 1, H, W, dtype=torch.bool)
    valid[..., -2:] = False
    return torch.stack(out).clamp(0, 1), {"flow": flow, "valid": valid}


def psnr(a, b):
    return (-10 * torch.log10(((a - b) ** 2).mean())).item()


def test_ivr_alone_removes_flicker():
    clean, fl = moving_video()
    g = torch.Generator().manual_seed(0)
    noisy = (clean + (torch.rand(8, 1, 1, 3, generator=g) - 0.5) * 0.16 + 0.02 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    m = IVR(IVRConfig(**SMALL))
    fit_ivr(m, noisy, 400)
    out = m.render(8, 32, 32)
    assert warp_error(out, fl["flow"], fl["valid"]) <= 0.5 * warp_error(noisy, fl["flow"], fl["valid"])
    assert psnr(out, clean) >= psnr(noisy, clean)
    assert m.render(2, 48, 40).shape == (2, 48, 40, 3)  # any resolution


def test_flow_loss_makes_corresponding_pixels_share_canonical_points():
    """Metric: mean L1 distance between the canonical points of p (frame n) and p + flow (frame n+1), valid pixels."""
    clean, fl = moving_video()

    def disagreement(m):
        xy = _grid(32, 32, "cpu")
        errs = []
        with torch.no_grad():
            for n in range(7):
                v = fl["valid"][n].reshape(-1)
                p = torch.cat([xy, torch.full((1024, 1), (n + 1) / 8)], -1)[v]
                q = torch.cat([p[:, :2] + fl["flow"][n].reshape(-1, 2)[v] / 32, torch.full((p.shape[0], 1), (n + 2) / 8)], -1)
                errs.append((m.canonical_points(q) - m.canonical_points(p)).abs().sum(-1).mean())
        return torch.stack(errs).mean().item()

    without, with_flow = IVR(IVRConfig(**SMALL)), IVR(IVRConfig(**SMALL))
    fit_ivr(without, clean, 300, flow=fl, flow_weight=0.0)
    fit_ivr(with_flow, clean, 300, flow=fl, flow_weight=1.0)
    assert disagreement(with_flow) < 0.5 * disagreement(without)


class _Stop(Exception):
    pass


def test_loop_regenerates_with_decreasing_strength_and_stops_with_a_video(ad):
    from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_reference, encode_video, sample_video

    clean, fl = moving_video(F=4)
    ref = encode_reference(ad, clean[:1])
    seen = []

    def regenerate(vs, strength, r):
        seen.append(strength)
        s = VideoSettings(frames=4, width=32, height=32, steps=4, cfg=3.0, seed=r, denoise=strength)
        return decode_latents(ad, sample_video(ad, s, ref, init_latents=encode_video(ad, vs)))

    ls = LoopSettings(total_steps=60, refresh_every=20, strength_start=0.6, strength_end=0.2, init_steps=10)
    assert strength_schedule(ls) == pytest.approx([0.6, 0.4, 0.2])
    vp, vs, previews, used = refine_loop(clean, regenerate, ls, flow=fl, reference=clean[0], cfg=IVRConfig(**SMALL))
    assert used == seen == pytest.approx([0.6, 0.4, 0.2]) and len(previews) == 3
    assert vp.shape == vs.shape == clean.shape and torch.isfinite(vp).all()

    def cb(step, total):
        if step == 30:
            raise _Stop()

    vp2, vs2, prev2, used2 = refine_loop(clean, regenerate, ls, flow=fl, cfg=IVRConfig(**SMALL), callback=cb, stop_exceptions=(_Stop,))
    assert used2 == pytest.approx([0.6]) and vp2.shape == clean.shape  # stopped during round 2: round 1's video comes back


def test_a_tcnn_backend_encoding_is_trained_not_built_after_the_optimiser(monkeypatch):
    """With tinycudann in use (CUDA), the hash encodings are tcnn modules. They must exist before fit_ivr makes its
    optimiser, or their parameters are never trained (the encoding used to be built lazily in forward). tinycudann
    and a GPU are not here, so a stand-in library with the same ``Encoding(dims, config)`` call takes its place, and the
    device check answers as on CUDA. The wiring under test is the pack's own."""
    import types

    import torch.nn as nn

    from performer_pkg.models.refine import hashgrid

    class Encoding(nn.Module):  # tcnn.Encoding's call shape: (P, dims) in [0, 1] -> (P, n_levels·n_features)
        def __init__(self, dims, config):
            super().__init__()
            self.params = nn.Parameter(torch.full((config["n_levels"] * config["n_features_per_level"],), 0.01))

        def forward(self, x):
            return x.mean(-1, keepdim=True) * self.params[None] + self.params[None]

    monkeypatch.setattr(hashgrid, "_tcnn", lambda: types.SimpleNamespace(Encoding=Encoding))
    monkeypatch.setattr(hashgrid.HashEncoding, "uses_tcnn_on", lambda self, device: True)
    model = IVR(IVRConfig(**SMALL))
    fit_ivr(model, moving_video(F=3, H=16, W=16)[0], steps=5)
    for enc in (model.h_def, model.h_can):
        assert isinstance(enc._tcnn_enc, Encoding)
        assert not torch.allclose(enc._tcnn_enc.params, torch.full_like(enc._tcnn_enc.params, 0.01))  # trained
