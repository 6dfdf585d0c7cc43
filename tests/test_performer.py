"""The synthetic performer (seeded ground truth) and the metrics."""
import numpy as np
import pytest

from performer_pkg.models import metrics as M
from performer_pkg.models.performer import MOTIONS, PerformerSpec, generate


@pytest.fixture(scope="module")
def wave():
    return generate(PerformerSpec(seed=3, character=1, motion="wave", frames=6, size=96))


def test_generator_is_seeded_and_consistent(wave):
    again = generate(PerformerSpec(seed=3, character=1, motion="wave", frames=6, size=96))
    assert np.array_equal(again["rgb"], wave["rgb"]) and np.array_equal(again["flow"], wave["flow"])
    other = generate(PerformerSpec(seed=4, character=1, motion="wave", frames=6, size=96))
    assert not np.array_equal(other["rgb"], wave["rgb"])
    rgb, mask, pose = wave["rgb"], wave["mask"], wave["pose"]
    assert rgb.shape == (6, 96, 96, 3) and mask.shape == (6, 96, 96) and pose.frames == 6 and wave["body"].frames == 6
    assert 0.03 < mask.mean() < 0.4
    # body keypoints fall on the person's silhouette (dilated by 2 px for joints on the outline)
    import cv2

    k = pose.keypoints[:, 0, :17]
    hits = []
    for f in range(6):
        m = cv2.dilate(mask[f].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        for x, y, c in k[f]:
            if c > 0:
                hits.append(m[int(y), int(x)])
    assert np.mean(hits) > 0.9
    # the true flow carries frame n+1's colours back onto frame n on valid pixels
    assert M.warp_error(rgb, wave["flow"], wave["valid"]) < 0.03
    for motion in MOTIONS:
        g = generate(PerformerSpec(seed=0, motion=motion, frames=2, size=48))
        assert g["mask"].any(), motion


def test_metrics_conventions(wave):
    gt = wave["rgb"]
    same = M.compute(gt, gt, gt_mask=wave["mask"], background=wave["background"], keypoints=wave["pose"].keypoints[:, 0],
                     flow=wave["flow"], valid=wave["valid"])
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0) and same["l1"] == 0.0 and same["flicker"] == 0.0
    assert same["mask_iou"] > 0.95 and same["face_psnr"] == 100.0 and same["warp_error"] == same["warp_error_gt"]
    # a uniform error of 10 grey levels: PSNR = 20·log10(255/10), L1 = 10/255
    off = np.clip(gt.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    m = M.compute(off, gt)
    exact = M.compute(np.full_like(gt, 100), np.full_like(gt, 90))
    assert exact["psnr"] == pytest.approx(20 * np.log10(25.5)) and exact["l1"] == pytest.approx(10 / 255)
    assert m["psnr"] < 100 and m["flicker"] < 1e-3  # a constant offset does not flicker
    jitter = np.clip(gt.astype(np.int16) + np.array([0, 12, -12, 12, -12, 0])[:, None, None, None], 0, 255).astype(np.uint8)
    assert M.compute(jitter, gt)["flicker"] > 0.02
    sheet = M.contact_sheet({"gt": gt, "off": off})
    assert sheet.shape == (2 * 96, 6 * 96, 3)
    with pytest.raises(Exception, match="must match"):
        M.compute(gt[:3], gt)
