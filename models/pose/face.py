"""Face detection, alignment and ArcFace embeddings (onnxruntime), all offline.

* Detection uses OpenCV's frontal-face Haar cascade, which ships inside the opencv-python wheels
  (nothing to download).  The largest face wins.
* Alignment: with five landmarks (eyes, nose tip, mouth corners — e.g. from the pose layer) a
  similarity transform onto the standard 112×112 ArcFace template; without them the eyes are looked
  for inside the face box (Haar eye cascade) and the face is rotated/scaled so the eyes land on the
  template's eye positions; if the eyes are not found, a square crop around the box is used.
* ArcFace: any ONNX file with the insightface signature (one input ``(1, 3, 112, 112)`` RGB, values
  ``(x − 127.5) / 127.5``; one output ``(1, 512)``), e.g. ``w600k_r50.onnx`` / ``glintr100.onnx``.
  NHWC inputs are recognised from the input shape.  The embedding is L2-normalised.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import BadInputError, BadModelFileError

# insightface's arcface_dst template (112×112): left eye, right eye, nose, left/right mouth corner.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def _cv2():
    import cv2

    return cv2


def _to_uint8(image) -> np.ndarray:
    from ..common import to_uint8

    a = to_uint8(image)
    return a[0] if a.ndim == 4 else a


def detect_face(image) -> Optional[Tuple[int, int, int, int]]:
    """Largest face box ``(x, y, w, h)`` in an RGB image (H,W,3; uint8 or 0..1 float), or None."""
    cv2 = _cv2()
    rgb = _to_uint8(image)
    grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    casc = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    m = max(16, min(grey.shape) // 12)
    faces = casc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(m, m))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def _eyes(grey: np.ndarray, box) -> Optional[np.ndarray]:
    cv2 = _cv2()
    x, y, w, h = box
    roi = grey[y:y + h // 2 + h // 10, x:x + w]
    casc = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_eye.xml"))
    eyes = casc.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=4, minSize=(max(4, w // 10),) * 2, maxSize=(w // 2,) * 2)
    if len(eyes) < 2:
        return None
    eyes = sorted(eyes, key=lambda e: e[2] * e[3], reverse=True)[:2]
    pts = np.array([[x + ex + ew / 2, y + ey + eh / 2] for ex, ey, ew, eh in eyes], dtype=np.float32)
    pts = pts[np.argsort(pts[:, 0])]
    if abs(pts[1, 0] - pts[0, 0]) < w * 0.2:
        return None
    return pts


def align_face(image, landmarks: Optional[Sequence[Sequence[float]]] = None, box=None, size: int = 112) -> np.ndarray:
    """112×112 (or ``size``) aligned RGB uint8 face crop.  Raises BadInputError when no face is found."""
    cv2 = _cv2()
    rgb = _to_uint8(image)
    s = size / 112.0
    if landmarks is not None:
        src = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
        if src.shape[0] != 5 or not np.isfinite(src).all():
            raise BadInputError("Face landmarks must be 5 finite (x, y) points: eyes, nose tip, mouth corners.")
        M, _ = cv2.estimateAffinePartial2D(src, ARCFACE_TEMPLATE * s, method=cv2.LMEDS)
        if M is None:
            raise BadInputError("Could not align the face from the given landmarks.")
        return cv2.warpAffine(rgb, M, (size, size), borderValue=0)
    if box is None:
        box = detect_face(rgb)
    if box is None:
        raise BadInputError("No face found in the reference image (OpenCV frontal-face detector). Use a photo with a "
                            "visible frontal face, or give face landmarks.")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    eyes = _eyes(grey, box)
    if eyes is not None:
        M, _ = cv2.estimateAffinePartial2D(eyes, ARCFACE_TEMPLATE[:2] * s, method=cv2.LMEDS)
        if M is not None:
            return cv2.warpAffine(rgb, M, (size, size), borderValue=0)
    x, y, w, h = box
    c = np.array([x + w / 2, y + h / 2 + 0.05 * h])
    half = 0.6 * max(w, h)
    src = np.float32([[c[0] - half, c[1] - half], [c[0] + half, c[1] - half], [c[0] - half, c[1] + half]])
    dst = np.float32([[0, 0], [size, 0], [0, size]])
    return cv2.warpAffine(rgb, cv2.getAffineTransform(src, dst), (size, size), borderValue=0)


class ArcFace:
    """ArcFace ONNX model run with onnxruntime (CUDA provider first when available)."""

    def __init__(self, path: str):
        from ..common import onnx_session

        if not os.path.isfile(path):
            raise BadModelFileError(f"ArcFace model not found: {path}")
        self.session = onnx_session(path, "ArcFace ONNX")
        inp = self.session.get_inputs()
        out = self.session.get_outputs()
        if len(inp) != 1 or len(out) < 1 or len(inp[0].shape) != 4:
            raise BadModelFileError(f"{path} does not have ArcFace's signature (one image input (1,3,112,112), one (1,512) output).")
        self.input = inp[0].name
        shape = inp[0].shape
        self.nhwc = shape[-1] == 3 and shape[1] != 3
        self.size = int(shape[1] if self.nhwc else shape[2]) if isinstance(shape[2], int) else 112

    def embed(self, face_rgb: np.ndarray) -> np.ndarray:
        """(512,) L2-normalised embedding of an aligned RGB face crop."""
        cv2 = _cv2()
        f = face_rgb if face_rgb.shape[0] == self.size else cv2.resize(face_rgb, (self.size, self.size))
        x = (f.astype(np.float32) - 127.5) / 127.5
        x = x[None] if self.nhwc else x.transpose(2, 0, 1)[None]
        y = self.session.run(None, {self.input: np.ascontiguousarray(x)})[0].reshape(-1).astype(np.float32)
        n = float(np.linalg.norm(y))
        if not np.isfinite(n) or n == 0:
            raise BadInputError("ArcFace returned an invalid embedding (NaN or zero).")
        return y / n


def face_boxes(keypoints: np.ndarray, width: int, height: int, scale: float = 1.3, threshold: float = 0.3) -> np.ndarray:
    """Per frame, the face crop box ``(x0, y0, x1, y1)`` Wan-Animate's preprocessing takes around the 68 face landmarks
    (COCO-WholeBody points 23–90): the landmarks' box grown to ``scale`` × its area at the same aspect, the width grown
    evenly, the height three quarters upwards (forehead and hair) and one quarter downwards, clipped to the image.

    ``keypoints``: (frames, 133, 3) of one person.  A frame without face landmarks takes the box of the nearest frame
    that has them; a sequence without any is refused."""
    from .sequence import FACE

    f = keypoints[:, FACE]
    seen = (f[..., 2] > threshold).sum(-1) >= 3
    if not seen.any():
        raise BadInputError("No frame of the pose sequence has face landmarks; face crops need them (extract the pose "
                            "with face = true).")
    boxes = np.zeros((len(keypoints), 4), np.float32)
    for i in np.flatnonzero(seen):
        pts = f[i][f[i, :, 2] > threshold, :2]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        grow = np.sqrt(scale)  # same aspect, scale × the area
        dw, dh = (w * grow - w) / 2, (h * grow - h) / 4
        boxes[i] = [max(x0 - dw, 0), max(y0 - 3 * dh, 0), min(x1 + dw, width), min(y1 + dh, height)]
    idx = np.flatnonzero(seen)
    for i in np.flatnonzero(~seen):
        boxes[i] = boxes[idx[np.abs(idx - i).argmin()]]
    return boxes


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int = 512, square: bool = False) -> np.ndarray:
    """``frames`` (F, H, W, 3) float in [0, 1] cropped to ``boxes`` and resized to ``size`` × ``size``.  By default the
    box itself is resized (stretched), as Wan-Animate's preprocessing resizes its face boxes to 512 × 512; with
    ``square`` the box is first widened to a square around its centre, inside the image where it fits."""
    cv2 = _cv2()
    out = np.zeros((len(frames), size, size, 3), np.float32)
    H, W = frames.shape[1:3]
    for i, (fr, (x0, y0, x1, y1)) in enumerate(zip(frames, boxes)):
        if square:
            side = max(x1 - x0, y1 - y0, 2.0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            x0 = min(max(cx - side / 2, 0), max(W - side, 0))
            y0 = min(max(cy - side / 2, 0), max(H - side, 0))
            x1, y1 = x0 + min(side, W), y0 + min(side, H)
        a, b = int(np.floor(x0)), int(np.floor(y0))
        c, d = max(int(np.ceil(x1)), a + 1), max(int(np.ceil(y1)), b + 1)
        crop = np.ascontiguousarray(fr[b:d, a:c])
        big = crop.shape[0] > size or crop.shape[1] > size
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if big else cv2.INTER_LINEAR)
    return out
