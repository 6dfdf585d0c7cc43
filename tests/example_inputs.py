"""Input files the bundled workflows name (written into ComfyUI's input folder by the tests and the demo).

* ``performer_reference.png``: a real photo (``skimage.data.astronaut()``, NASA, public domain), 128×128.
* ``performer_skeleton.gif``: 12 frames of an OpenPose-coloured stick figure waving an arm (drawn here
  with OpenCV; the pose layer's renderer will replace it).
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


def write_inputs(input_dir: str, frames: int = 12) -> None:
    import cv2
    import skimage.data
    from PIL import Image

    os.makedirs(input_dir, exist_ok=True)
    photo = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    Image.fromarray(photo).save(os.path.join(input_dir, "performer_reference.png"))
    imgs = [Image.fromarray(stick_figure(i / frames)) for i in range(frames)]
    imgs[0].save(os.path.join(input_dir, "performer_skeleton.gif"), save_all=True, append_images=imgs[1:], duration=125, loop=0)


if __name__ == "__main__":  # python tests/example_inputs.py /path/to/ComfyUI/input
    import sys

    write_inputs(sys.argv[1])
    print("wrote performer_reference.png and performer_skeleton.gif to", sys.argv[1])
