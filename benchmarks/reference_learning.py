"""Can a tiny UNet learn to take appearance from its reference through causal reference attention, and does the
training objective decide it?  A toy: every image is one random colour (4 latent channels) plus a random pattern;
the reference is the same colour with another pattern, so only the reference tells the colour.  The demo model's
UNet (8 heads of 4 channels at the attention level) trains for ``--steps`` with ε- or v-prediction (the pack's
training path: ``write_reference(..., grad=True)``); then the loss at a high-noise timestep (``--eval-t``, where the
colour has to come from somewhere other than the noisy input) is compared with and without the reference.

    .venv/bin/python benchmarks/reference_learning.py [--steps 1500 --eval-t 980 --objectives eps v --parts 1]

``--parts N`` makes each image N horizontal colour bands (parts) at a random cyclic shift, different in target and
reference; a fixed code per part is added to both inputs, so the model knows where each part is and only the
reference knows its colour (the demo model's per-part problem in miniature).

``--zero-snr`` (v only) rescales the betas to zero terminal SNR as the demo model's v runs do; with ordinary betas a
band's colour can still be read from the noisy input at t = 980, which hides part of what the reference brings.
``--eval-every K`` records the gain along the way (``gain_curve``), ``--attn-lr-mult`` is the training script's option.
"""
from __future__ import annotations

import argparse
import time

from _common import setup, write_result


def run(objective: str, steps: int, eval_t: int, heads: int, seed: int = 0, parts: int = 1, zero_snr: bool = False,
        attn_lr_mult: float = 1.0, eval_every: int = 0):
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from performer_pkg.models.attention.reference import reference_attention, write_reference

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=heads, norm_num_groups=32)
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction" if objective == "v" else "epsilon", rescale_betas_zero_snr=zero_snr)
    ctx = torch.zeros(1, 77, 32)
    attn = [p for n, p in unet.named_parameters() if ".attn1." in n]
    ids = {id(p) for p in attn}
    opt = torch.optim.AdamW([{"params": [p for p in unet.parameters() if id(p) not in ids]},
                             {"params": attn, "lr": 5e-4 * attn_lr_mult}], lr=5e-4)
    g = torch.Generator().manual_seed(seed)

    # --parts N: the image is N horizontal bands (parts), each its own random colour; target and reference show the
    # bands at different cyclic shifts, and a fixed code per part is added to the UNet input of both (as the pose
    # controller's features are), so the model knows where each part is but only the reference knows its colour
    codes = torch.randn(parts, 4, generator=torch.Generator().manual_seed(seed + 99))

    def layout(shift):
        band = ((torch.arange(16) * parts // 16 + shift) % parts)[:, None].expand(16, 16)
        return band, codes[band].permute(2, 0, 1)[None]

    def batch(g=g):
        if parts == 1:  # the original toy (its draws unchanged)
            c = torch.randn(1, 4, 1, 1, generator=g)
            return c + 0.3 * torch.randn(1, 1, 16, 16, generator=g), c + 0.3 * torch.randn(1, 1, 16, 16, generator=g), 0, 0
        c = torch.randn(parts, 4, generator=g)
        (bt, kt), (br, kr) = (layout(int(torch.randint(parts, (1,), generator=g))) for _ in range(2))
        x0 = c[bt].permute(2, 0, 1)[None] + 0.3 * torch.randn(1, 1, 16, 16, generator=g)
        ref = c[br].permute(2, 0, 1)[None] + 0.3 * torch.randn(1, 1, 16, 16, generator=g)
        return x0, ref, kt, kr

    def loss(x0, ref, t, use_ref, kt=0, kr=0, g=g):
        noise = torch.randn(x0.shape, generator=g)
        xt = ddpm.add_noise(x0, noise, t) + kt
        ref = ref + kr
        with reference_attention(unet, uncond="keep") as st:
            if use_ref:
                write_reference(st, lambda: unet(ref, torch.zeros((), dtype=torch.long), encoder_hidden_states=ctx),
                                grad=torch.is_grad_enabled())
            else:
                st.mode = "off"
            pred = unet(xt, t, encoder_hidden_states=ctx).sample
        target = ddpm.get_velocity(x0, noise, t) if objective == "v" else noise
        return F.mse_loss(pred, target)

    def gain_now():  # on a fixed set from its own generator, so the training draws are unchanged
        eg = torch.Generator().manual_seed(seed + 5)
        with torch.no_grad():
            pairs = [batch(eg) for _ in range(30)]
            t = torch.tensor([eval_t])
            w = [loss(x, r, t, True, kt, kr, g=torch.Generator().manual_seed(j)).item() for j, (x, r, kt, kr) in enumerate(pairs)]
            wo = [loss(x, r, t, False, kt, kr, g=torch.Generator().manual_seed(j)).item() for j, (x, r, kt, kr) in enumerate(pairs)]
        return round(1 - sum(w) / sum(wo), 3)

    curve = []
    t0 = time.time()
    for i in range(steps):
        if eval_every and i % eval_every == 0:
            curve.append([i, gain_now()])
            print("gain at step", *curve[-1], flush=True)
        x0, ref, kt, kr = batch()
        ls = loss(x0, ref, torch.randint(0, 1000, (1,), generator=g), True, kt, kr)
        opt.zero_grad()
        ls.backward()
        opt.step()
    with torch.no_grad():
        pairs = [batch() for _ in range(30)]
        t = torch.tensor([eval_t])
        with_ref = sum(loss(x, r, t, True, kt, kr).item() for x, r, kt, kr in pairs) / len(pairs)
        without = sum(loss(x, r, t, False, kt, kr).item() for x, r, kt, kr in pairs) / len(pairs)
    return {"loss_with_reference": round(with_ref, 4), "loss_without_reference": round(without, 4),
            "gain": round(1 - with_ref / without, 3), "seconds": round(time.time() - t0, 1),
            **({"gain_curve": curve} if eval_every else {})}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-t", type=int, default=980)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--parts", type=int, default=1,
                    help="colour parts per image (1: one colour, the original toy); each part's place is coded in the "
                         "input of both the target and the reference, its colour only in the reference")
    ap.add_argument("--objectives", nargs="+", default=["eps", "v"], choices=["eps", "v"])
    ap.add_argument("--zero-snr", action="store_true",
                    help="rescale the betas to zero terminal SNR, as the demo model's v runs train (v only): at high t the "
                         "noisy input then leaks no colour, which with ordinary betas it still does (a band of 64 latent "
                         "pixels averages the noise down enough to read its colour at t = 980)")
    ap.add_argument("--attn-lr-mult", type=float, default=1.0,
                    help="learning rate of the spatial self-attention layers as a multiple of the rest's (the demo "
                         "training script's option of the same name)")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also record the gain every this many steps on a fixed set (its own generator: the training "
                         "draws and the final figures are unchanged)")
    a = ap.parse_args()
    if a.zero_snr and "eps" in a.objectives:
        ap.error("--zero-snr needs --objectives v (ε is undefined at zero SNR)")
    setup(models=False)
    write_result("reference_learning", {"spec": vars(a), **{o: run(o, a.steps, a.eval_t, a.heads, parts=a.parts, zero_snr=a.zero_snr,
                                                                   attn_lr_mult=a.attn_lr_mult, eval_every=a.eval_every) for o in a.objectives}})


if __name__ == "__main__":
    main()
