"""Input files the bundled workflows name (written into ComfyUI's input folder by the tests and the demo).

* ``performer_reference.png``: a real photo (``skimage.data.astronaut()``, NASA, public domain), 256×256.
* ``performer_driving.webp``: 8 frames of that photo mirrored, drifting and turning (a stand-in driving video).
* ``performer_skeleton.gif``: 12 frames of an OpenPose-coloured stick figure waving an arm (drawn here
  with OpenCV; the pose layer's renderer will replace it).
* ``performer_driving_pose.json`` / ``performer_reference_pose.json``: OpenPose-JSON pose sequences of the
  hand-made person below (12 frames walking and waving; one frame of a smaller, longer-legged person on a
  640×512 canvas) for the retargeting workflow.
"""
from __future__ import annotations

import math
import os

import numpy as np

# OpenPose-18 limb pairs and colours (the ControlNet convention), enough for a stick figure.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255)]


def stick_figure(t: float, size: int = 128) -> np.ndarray:
    import cv2

    s = size / 128
    j = {0: (64, 22), 1: (64, 40), 2: (50, 42), 5: (78, 42), 8: (56, 78), 11: (72, 78),
         9: (54, 98), 10: (53, 120), 12: (74, 98), 13: (75, 120)}
    a = math.radians(-30 - 100 * (0.5 + 0.5 * math.sin(2 * math.pi * t)))  # right arm waves
    j[3] = (50 - 8, 42 + 12)
    j[4] = (j[3][0] + 18 * math.cos(a), j[3][1] + 18 * math.sin(a))
    j[6] = (78 + 8, 42 + 14)
    j[7] = (78 + 10, 42 + 30)
    img = np.zeros((size, size, 3), np.uint8)
    for (p, q), c in zip(LIMBS, COLOURS):
        cv2.line(img, tuple(int(v * s) for v in j[p]), tuple(int(v * s) for v in j[q]), c, max(1, int(3 * s)))
    for k, (x, y) in j.items():
        cv2.circle(img, (int(x * s), int(y * s)), max(1, int(3 * s)), COLOURS[k % len(COLOURS)], -1)
    return img


def hand_made_pose(w=512, h=512, dx=0.0, wave=0.0):
    """(needs the pack importable as performer_pkg) A standing person: every body, foot, face and hand point placed by hand (pixels)."""
    from performer_pkg.models.pose.sequence import LHAND, RHAND, PoseSequence

    k = np.zeros((1, 1, 133, 3), np.float32)
    body = {0: (256, 96), 1: (246, 86), 2: (266, 86), 3: (234, 92), 4: (278, 92), 5: (216, 150), 6: (296, 150),
            7: (196, 220), 8: (316, 220), 9: (186, 290), 10: (326, 290), 11: (230, 300), 12: (282, 300),
            13: (226, 390), 14: (286, 390), 15: (224, 470), 16: (288, 470)}
    for i, (x, y) in body.items():
        k[0, 0, i] = (x + dx, y, 0.9)
    if wave:  # raise the right forearm: rotate the wrist about the elbow (limb length unchanged)
        ex, ey = body[8]
        vx, vy = body[10][0] - ex, body[10][1] - ey
        c, s_ = math.cos(-wave), math.sin(-wave)
        k[0, 0, 10, :2] = (ex + dx + c * vx - s_ * vy, ey + s_ * vx + c * vy)
    feet = [(214, 486), (232, 488), (226, 474), (298, 486), (280, 488), (286, 474)]
    k[0, 0, 17:23] = [(x + dx, y, 0.8) for x, y in feet]
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    k[0, 0, 23:91, 0] = 256 + dx + 22 * np.cos(t)
    k[0, 0, 23:91, 1] = 100 + 28 * np.sin(t)
    k[0, 0, 23:91, 2] = 0.7
    for sl, (wx, wy), sgn in ((LHAND, body[9], -1), (RHAND, body[10], 1)):
        pts = [(wx, wy)]
        for finger in range(5):
            for j in range(1, 5):
                pts.append((wx + sgn * (finger * 5 - 10), wy + 8 * j))
        k[0, 0, sl, :2] = np.array(pts) + (dx, 0)
        k[0, 0, sl, 2] = 0.6
    return PoseSequence(k, w, h, fps=12.0)



def write_inputs(input_dir: str, frames: int = 12) -> None:
    import cv2
    import skimage.data
    from PIL import Image

    os.makedirs(input_dir, exist_ok=True)
    full = skimage.data.astronaut()
    photo = cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA)
    Image.fromarray(photo).save(os.path.join(input_dir, "performer_reference.png"))
    # "driving video": the mirrored photo drifting and turning a little, as an animated lossless WebP
    moving = []
    for i in range(8):
        a = 4.0 * math.sin(i / 8 * 2 * math.pi)
        M = cv2.getRotationMatrix2D((256, 256), a, 0.9)
        M[0, 2] += 6 * i - 20
        moving.append(Image.fromarray(cv2.resize(cv2.warpAffine(full[:, ::-1].copy(), M, (512, 512), borderMode=cv2.BORDER_REFLECT),
                                                 (256, 256), interpolation=cv2.INTER_AREA)))
    moving[0].save(os.path.join(input_dir, "performer_driving.webp"), save_all=True, append_images=moving[1:], duration=125,
                   loop=0, lossless=True)
    imgs = [Image.fromarray(stick_figure(i / frames)) for i in range(frames)]
    imgs[0].save(os.path.join(input_dir, "performer_skeleton.gif"), save_all=True, append_images=imgs[1:], duration=125, loop=0)
    try:
        from performer_pkg.models.pose.sequence import PoseSequence, save_json
    except ImportError:
        return
    drive = PoseSequence(np.concatenate([hand_made_pose(dx=6 * f, wave=0.25 * f).keypoints for f in range(frames)]), 512, 512, 8.0)
    save_json(drive, os.path.join(input_dir, "performer_driving_pose.json"))
    ref = hand_made_pose().keypoints.copy()
    ref[..., :2] = (ref[..., :2] - 256) * 0.7 + (300, 280)  # another person: smaller, off-centre
    ref[0, 0, 13:17, 1] += 25  # longer legs
    save_json(PoseSequence(ref, 640, 512, 8.0), os.path.join(input_dir, "performer_reference_pose.json"))


if __name__ == "__main__":  # python tests/example_inputs.py /path/to/ComfyUI/input
    import sys

    write_inputs(sys.argv[1])
    print("wrote performer_reference.png and performer_skeleton.gif to", sys.argv[1])
