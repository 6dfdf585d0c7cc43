"""Hash encoding: against a slow per-point reference written from the Instant-NGP / tiny-cuda-nn description,
gradients, annealing, and tinycudann parity where it exists."""
import math

import pytest
import torch

from performer_pkg.models.refine.hashgrid import PRIMES, HashEncoding


def slow_reference(enc: HashEncoding, x: torch.Tensor) -> torch.Tensor:
    """One point, one level, one corner at a time."""
    out = torch.zeros(x.shape[0], enc.levels * enc.features, dtype=torch.float64)
    table = enc.table.detach().double()
    d = enc.dims
    for p in range(x.shape[0]):
        for l in range(enc.levels):
            s = enc.base * enc.scale ** l - 1.0
            R = math.ceil(s) + 1
            pos = [float(x[p, i]) * s + 0.5 for i in range(d)]
            lo = [math.floor(v) for v in pos]
            fr = [v - f for v, f in zip(pos, lo)]
            acc = torch.zeros(enc.features, dtype=torch.float64)
            for corner in range(2 ** d):
                c = [lo[i] + ((corner >> i) & 1) for i in range(d)]
                w = 1.0
                for i in range(d):
                    w *= fr[i] if (corner >> i) & 1 else 1 - fr[i]
                if R ** d <= enc.T:
                    idx = sum(c[i] * R ** i for i in range(d))
                else:
                    h = 0
                    for i in range(d):
                        h ^= (c[i] * PRIMES[i]) & 0xFFFFFFFF
                    idx = h
                acc += w * table[l, idx % enc.T]
            out[p, l * enc.features:(l + 1) * enc.features] = acc
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_slow_reference_and_gradients_reach_the_table(dims):
    torch.manual_seed(0)
    enc = HashEncoding(dims=dims, levels=6, features=2, log2_table=10, base=4, finest=64, init_std=1.0)
    assert enc.dense.any() and not enc.dense.all()  # both dense and hashed levels are exercised
    x = torch.rand(40, dims, dtype=torch.float64)
    x[0] = 0.0
    x[1] = 1.0
    got = enc.double()(x)
    torch.testing.assert_close(got, slow_reference(enc, x), rtol=1e-9, atol=1e-9)
    enc.table.grad = None
    enc(x).square().sum().backward()
    g = enc.table.grad
    assert g is not None and g.abs().sum() > 0
    touched = (g.abs().sum(-1) > 0).sum()
    assert 0 < touched < g.shape[0] * g.shape[1]  # only the looked-up entries get gradient


def test_annealing_opens_levels_coarse_to_fine():
    enc = HashEncoding(dims=2, levels=4, features=2, log2_table=8, base=4, finest=32)
    assert enc.annealed(0.0).sum() == 0
    w = enc.annealed(1.5)
    assert torch.allclose(w[:2], torch.ones(2)) and 0 < w[2] < 1 and w[4:].sum() == 0
    assert torch.allclose(enc.annealed(4.0), torch.ones(8))


def test_tinycudann_parity():
    tcnn = pytest.importorskip("tinycudann", reason="tinycudann is not installed (it is optional and not on PyPI)")
    if not torch.cuda.is_available():
        pytest.skip("tinycudann needs a CUDA device")
    enc = HashEncoding(dims=3, levels=8, features=2, log2_table=14, base=8, scale=1.5, backend="torch").cuda()
    x = torch.rand(1000, 3, device="cuda")
    ours = enc(x)
    t = HashEncoding(dims=3, levels=8, features=2, log2_table=14, base=8, scale=1.5, backend="tcnn").cuda()
    # copy our table into tcnn's per-level layout (levels store min(R^d, T) entries, padded to a multiple of 8)
    params = []
    for l in range(enc.levels):
        n = min(int(enc.res[l]) ** 3, enc.T)
        n = (n + 7) // 8 * 8
        params.append(enc.table[l, :n].reshape(-1))
    t(x)  # builds the tcnn encoding
    with torch.no_grad():
        t._tcnn_enc.params.copy_(torch.cat(params).to(t._tcnn_enc.params.dtype))
    torch.testing.assert_close(t(x), ours.float(), rtol=1e-2, atol=1e-3)
    del tcnn
