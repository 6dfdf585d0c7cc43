"""PoseCrafter latent affine editing: the affine solver, the latent box, the warp, and the fallback."""
import numpy as np
import pytest
import torch

from performer_pkg.models.posecrafter.editing import edit_latents, latent_box, solve_affine, warp_latent


def test_solver_recovers_a_known_affine_from_visible_landmarks():
    rng = np.random.default_rng(0)
    A = np.array([[1.1, -0.2, 13.5], [0.15, 0.9, -7.25]])
    src = rng.uniform(0, 200, (68, 2))
    dst = src @ A[:, :2].T + A[:, 2]
    vis = rng.random(68) > 0.3
    dst[~vis] = rng.uniform(-1e3, 1e3, (int((~vis).sum()), 2))  # garbage where not visible must not matter
    got, why = solve_affine(src, dst, vis)
    assert np.abs(got - A).max() <= 1e-4 and "fitted" in why
    none, why = solve_affine(src[:2], dst[:2])
    assert none is None and "only 2 landmark" in why
    col = np.stack([np.arange(5.0), 2 * np.arange(5.0)], 1)
    assert solve_affine(col, col)[0] is None


@pytest.mark.parametrize("size", [(64, 64), (264, 200), (200, 136)])  # (W, H): latent sizes incl. odd ones (33×25, 25×17)
def test_pasted_box_is_where_the_target_landmarks_are(size):
    W, H = size
    s = 8
    h, w = H // s, W // s
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, h, w, generator=g)
    init = torch.randn(1, 4, 2, h, w, generator=g)
    rng = np.random.default_rng(1)
    src = np.concatenate([rng.uniform(10, min(W, H) - 30, (68, 2)), np.ones((68, 1))], 1)
    dst = src.copy()
    dst[:, :2] += (13.3, 9.7)  # the face moved by a known shift
    few = src.copy()
    few[3:, 2] = 0  # frame 1: only 3 landmarks visible ... and then only 2
    few[2, 2] = 0
    out, rep, boxes = edit_latents(init, ref, {"face": src}, [{"face": dst}, {"face": few}], s, margin=0.0, regions=("face",))
    y0, y1, x0, x1 = boxes[0]["face"]
    assert (x0, x1) == (max(int(np.floor(dst[:, 0].min() / s)), 0), min(int(np.ceil(dst[:, 0].max() / s)), w))
    assert (y0, y1) == (max(int(np.floor(dst[:, 1].min() / s)), 0), min(int(np.ceil(dst[:, 1].max() / s)), h))
    changed = (out[0, :, 0] != init[0, :, 0]).any(0)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert not changed[~inside].any() and changed[inside].float().mean() > 0.9  # only the box, all of it
    A = np.array([[1, 0, 13.3], [0, 1, 9.7]])
    torch.testing.assert_close(out[0, :, 0, y0:y1, x0:x1], warp_latent(ref, A, s)[:, y0:y1, x0:x1])
    # frame 1: too few landmarks -> untouched, and the report says so
    assert torch.equal(out[0, :, 1], init[0, :, 1]) and rep[1]["face"].startswith("skipped: only 2 landmark")


def test_warp_moves_content_by_the_affine_in_latent_units():
    lat = torch.zeros(1, 16, 16)
    lat[0, 4, 4] = 1.0
    moved = warp_latent(lat, np.array([[1, 0, 16.0], [0, 1, 8.0]]), 8)  # +2 cells right, +1 down
    assert moved[0].argmax().item() == 5 * 16 + 6
    assert latent_box(np.array([[7.9, 8.1], [16.1, 23.9]]), np.array([True, True]), (16, 16), 8) == (1, 3, 0, 3)
