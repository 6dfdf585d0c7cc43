"""Pose extractors producing :class:`~.pose.PoseSequence` from RGB frames, and a content-keyed cache.

* :class:`MediaPipeExtractor` — the offline default: MediaPipe Holistic (pose 33 + face mesh 468 + hands 21),
  whose models ship inside the ``mediapipe`` 0.10.14–0.10.21 wheels (install with ``--no-deps``, see the
  README).  Mapped onto COCO-WholeBody-133: body and feet from the pose landmarks (small toes do not
  exist in MediaPipe and stay absent), the 68 face points from the mesh (the usual mesh→iBUG table),
  hands directly (same 21-point order).  One person per frame.  Points outside the frame are absent.
* :class:`DWPoseExtractor` — DWPose's two ONNX files (YOLOX person detector + RTMPose whole-body
  estimator with SimCC heads) run with onnxruntime, CUDA provider first; no mmcv/mmpose.  The
  pre/post-processing follows DWPose's own ``onnxdet``/``onnxpose``: letterbox to 640 with grey 114
  padding, grid decode over strides 8/16/32, NMS; per person an affine crop with 1.25 padding to 288×384,
  ImageNet mean/std, SimCC argmax / 2, confidence = the smaller of the two maxima.

Frames are uint8 RGB arrays (F, H, W, 3).  ``callback(done, total)`` is called per frame.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np

from ..common import onnx_session, to_uint8
from ..errors import BadInputError, BadModelFileError, MissingModelError
from .sequence import FACE, LHAND, N_POINTS, RHAND, PoseSequence

Callback = Optional[Callable[[int, int], None]]

MP_TO_COCO = {0: 0, 2: 1, 5: 2, 7: 3, 8: 4, 11: 5, 12: 6, 13: 7, 14: 8, 15: 9, 16: 10, 23: 11, 24: 12, 25: 13, 26: 14,
              27: 15, 28: 16, 31: 17, 29: 19, 32: 20, 30: 22}
# MediaPipe face-mesh index for each of the 68 iBUG landmarks (jaw, brows, nose, eyes, mouth).
MESH_TO_68 = [127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,
              70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
              168, 197, 5, 4, 75, 97, 2, 326, 305,
              33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
              61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87]
assert len(MESH_TO_68) == 68


def check_frames(frames: np.ndarray, what: str = "images") -> np.ndarray:
    if frames is None or frames.ndim != 4 or frames.shape[0] == 0:
        raise BadInputError(f"{what} must be a non-empty batch of frames (frames, height, width, 3); got "
                            f"{None if frames is None else tuple(frames.shape)}.")
    if frames.shape[-1] not in (3, 4):
        raise BadInputError(f"{what} must have 3 colour channels; got {frames.shape[-1]}.")
    if frames.dtype != np.uint8 and not np.isfinite(frames).all():
        raise BadInputError(f"{what} contain NaN or infinite values.")
    return to_uint8(frames)



# The one install recipe for the offline MediaPipe extractor (README, requirements.txt and the error above quote it;
# tests/test_install.py checks they agree).  mediapipe 0.10.21 pins numpy<2 but runs on numpy 2, and imports
# matplotlib when it loads.
MEDIAPIPE_RECIPE = ('pip install --no-deps mediapipe==0.10.21 && '
                    'pip install "protobuf>=4.25.3,<5" absl-py flatbuffers attrs matplotlib')

class MediaPipeExtractor:
    name = "mediapipe"

    def __init__(self, face: bool = True, hands: bool = True, min_confidence: float = 0.5, video: bool = True):
        try:
            import mediapipe as mp  # noqa: F401
            self._holistic = mp.solutions.holistic
        except Exception as e:  # noqa: BLE001
            raise BadInputError(
                "The MediaPipe extractor needs mediapipe 0.10.21 (its pose/face/hand models ship inside that wheel; newer "
                f"releases have none). Install it in ComfyUI's Python without its numpy<2 pin: {MEDIAPIPE_RECIPE}  "
                f"({type(e).__name__}: {e})") from e
        self.face, self.hands, self.min_confidence, self.video = face, hands, float(min_confidence), video

    def settings(self) -> str:
        return f"{self.name}:face={self.face}:hands={self.hands}:conf={self.min_confidence}:video={self.video}"

    def __call__(self, frames: np.ndarray, fps: float = 8.0, callback: Callback = None) -> PoseSequence:
        frames = check_frames(frames)
        F, H, W, _ = frames.shape
        k = np.zeros((F, 1, N_POINTS, 3), np.float32)
        with self._holistic.Holistic(static_image_mode=not self.video, model_complexity=1, smooth_landmarks=self.video,
                                     refine_face_landmarks=False, min_detection_confidence=self.min_confidence,
                                     min_tracking_confidence=self.min_confidence) as hol:
            for f in range(F):
                r = hol.process(frames[f])
                if r.pose_landmarks is not None:
                    lm = r.pose_landmarks.landmark
                    for m, c in MP_TO_COCO.items():
                        x, y, v = lm[m].x * W, lm[m].y * H, lm[m].visibility
                        if 0 <= x < W and 0 <= y < H:
                            k[f, 0, c] = (x, y, v)
                    if self.face and r.face_landmarks is not None:
                        fl = r.face_landmarks.landmark
                        for i, m in enumerate(MESH_TO_68):
                            x, y = fl[m].x * W, fl[m].y * H
                            if 0 <= x < W and 0 <= y < H:
                                k[f, 0, FACE.start + i] = (x, y, 1.0)
                    if self.hands:
                        for res, sl in ((r.left_hand_landmarks, LHAND), (r.right_hand_landmarks, RHAND)):
                            if res is None:
                                continue
                            for i, p in enumerate(res.landmark):
                                x, y = p.x * W, p.y * H
                                if 0 <= x < W and 0 <= y < H:
                                    k[f, 0, sl.start + i] = (x, y, 1.0)
                if callback:
                    callback(f + 1, F)
        return PoseSequence(k, W, H, fps)


# ----------------------------------------------------------------------------- DWPose (ONNX)


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list:
    order = scores.argsort()[::-1]
    keep = []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (area[i] + area[order[1:]] - inter)
        order = order[1:][iou <= thr]
    return keep


def _session(path: str, input_shape, outputs, what: str):
    """onnxruntime for ``.onnx``; TorchScript for comfyui_controlnet_aux's ``*.torchscript.pt`` files (fixed batch from
    "bs<N>" in the name)."""
    import re

    from ..common import TorchScriptSession, is_torchscript

    if not is_torchscript(path):
        return onnx_session(path, what)
    m = re.search(r"bs(\d+)", os.path.basename(path))
    return TorchScriptSession(path, input_shape, outputs, int(m.group(1)) if m else None, what)


class DWPoseExtractor:
    name = "dwpose"
    MEAN = np.array([123.675, 116.28, 103.53], np.float32)
    STD = np.array([58.395, 57.12, 57.375], np.float32)

    def __init__(self, det_path: str, pose_path: str, max_people: int = 4, det_threshold: float = 0.3):
        for p, what in ((det_path, "detector (yolox_l.onnx)"), (pose_path, "pose estimator (dw-ll_ucoco_384.onnx)")):
            if not os.path.isfile(p):
                raise MissingModelError("performer_pose", [os.path.basename(p)], [os.path.dirname(p)],
                                        f"DWPose {what} not found.")
        self.det = _session(det_path, [1, 3, 640, 640], ["output"], "DWPose detector (YOLOX)")
        hw = (256, 192) if "384" not in os.path.basename(pose_path) else (384, 288)  # as controlnet_aux names them
        self.pose = _session(pose_path, ["batch", 3, *hw], ["simcc_x", "simcc_y"], "DWPose pose estimator (RTMPose)")
        di = self.det.get_inputs()[0]
        self.det_size = tuple(int(s) for s in di.shape[2:4]) if all(isinstance(s, int) for s in di.shape[2:4]) else (640, 640)
        pi = self.pose.get_inputs()[0]
        if len(pi.shape) != 4 or len(self.pose.get_outputs()) != 2:
            raise BadModelFileError(f"{pose_path} does not have DWPose's signature (one (N,3,384,288) input; simcc_x and simcc_y outputs).")
        self.pose_hw = (int(pi.shape[2]), int(pi.shape[3]))
        self.pose_batch = pi.shape[0] if isinstance(pi.shape[0], int) else None  # None = dynamic batch
        self.max_people, self.det_threshold = int(max_people), float(det_threshold)
        self.paths = (det_path, pose_path)

    def settings(self) -> str:
        return f"{self.name}:{self.paths}:{self.max_people}:{self.det_threshold}"

    def detect(self, img: np.ndarray) -> np.ndarray:
        H0, W0 = self.det_size
        h, w = img.shape[:2]
        ratio = min(H0 / h, W0 / w)
        import cv2

        padded = np.full((H0, W0, 3), 114, np.float32)
        rs = cv2.resize(img, (int(w * ratio), int(h * ratio)), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        padded[: rs.shape[0], : rs.shape[1]] = rs
        out = self.det.run(None, {self.det.get_inputs()[0].name: padded.transpose(2, 0, 1)[None]})[0][0]
        grids, strides = [], []
        for s in (8, 16, 32):
            hs, ws = H0 // s, W0 // s
            xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
            grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
            strides.append(np.full((hs * ws, 1), s))
        grids, strides = np.concatenate(grids), np.concatenate(strides)
        if out.shape[0] != grids.shape[0]:
            raise BadModelFileError(f"The DWPose detector output has {out.shape[0]} anchors; expected {grids.shape[0]} for a {W0}×{H0} input.")
        xy = (out[:, :2] + grids) * strides
        wh = np.exp(out[:, 2:4]) * strides
        scores = out[:, 4] * out[:, 5]  # objectness × person class
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / ratio
        sel = scores > 0.1
        boxes, scores = boxes[sel], scores[sel]
        if not len(boxes):
            return np.zeros((0, 4), np.float32)
        keep = [i for i in _nms(boxes, scores, 0.45) if scores[i] > self.det_threshold][: self.max_people]
        b = boxes[keep]
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w - 1)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h - 1)
        return b.astype(np.float32)

    def _crop(self, img, box):
        import cv2

        ph, pw = self.pose_hw
        x0, y0, x1, y1 = box
        c = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
        s = np.array([x1 - x0, y1 - y0], np.float32) * 1.25
        aspect = pw / ph
        if s[0] > s[1] * aspect:
            s[1] = s[0] / aspect
        else:
            s[0] = s[1] * aspect
        src = np.float32([c + [-s[0] / 2, -s[1] / 2], c + [s[0] / 2, -s[1] / 2], c + [-s[0] / 2, s[1] / 2]])
        dst = np.float32([[0, 0], [pw, 0], [0, ph]])
        crop = cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (pw, ph), flags=cv2.INTER_LINEAR)
        return ((crop.astype(np.float32) - self.MEAN) / self.STD).transpose(2, 0, 1), c, s

    def __call__(self, frames: np.ndarray, fps: float = 8.0, callback: Callback = None) -> PoseSequence:
        frames = check_frames(frames)
        F, H, W, _ = frames.shape
        k = np.zeros((F, self.max_people, N_POINTS, 3), np.float32)
        ph, pw = self.pose_hw
        inp = self.pose.get_inputs()[0].name
        for f in range(F):
            boxes = self.detect(frames[f])
            if len(boxes):
                crops = [self._crop(frames[f], b) for b in boxes]
                batch = np.stack([c[0] for c in crops]).astype(np.float32)
                if self.pose_batch is None:
                    sx, sy = self.pose.run(None, {inp: batch})
                else:
                    outs = [self.pose.run(None, {inp: batch[i:i + 1]}) for i in range(len(batch))]
                    sx, sy = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
                split_x, split_y = sx.shape[-1] / pw, sy.shape[-1] / ph
                lx, ly = sx.argmax(-1), sy.argmax(-1)
                conf = np.minimum(sx.max(-1), sy.max(-1))
                for p, (_, c, s) in enumerate(crops):
                    x = lx[p] / split_x / pw * s[0] + c[0] - s[0] / 2
                    y = ly[p] / split_y / ph * s[1] + c[1] - s[1] / 2
                    ok = conf[p] > 0
                    k[f, p, :, 0] = np.where(ok, x, 0)
                    k[f, p, :, 1] = np.where(ok, y, 0)
                    k[f, p, :, 2] = np.where(ok, conf[p], 0)
            if callback:
                callback(f + 1, F)
        people = max(1, int((k[..., 2] > 0).any(-1).sum(-1).max()))
        return PoseSequence(k[:, :people], W, H, fps)


def require_person(pose: PoseSequence, what: str = "images") -> PoseSequence:
    """Documented behaviour: no person in any frame is an error; frames without a person keep absent points
    (fill short gaps with Clean Pose)."""
    if not pose.person_present().any():
        raise BadInputError(f"No person found in any frame of {what} ({pose.frames} frames, {pose.width}×{pose.height}).")
    return pose


# ----------------------------------------------------------------------------- OpenPose (controlnet-aux)


OPENPOSE_FILES = {"body": "body_pose_model.pth", "hand": "hand_pose_model.pth", "face": "facenet.pth"}


def openpose_result_to_133(results, width: int, height: int, max_people: int) -> np.ndarray:
    """controlnet_aux ``PoseResult`` list (normalised coordinates; absent = None or negative) -> (people, 133, 3)."""
    from .sequence import OP18_FROM_COCO

    k = np.zeros((max(1, min(len(results), max_people)), N_POINTS, 3), np.float32)
    for p, r in enumerate(results[:max_people]):
        def put(idx, kp):
            if kp is not None and kp.x >= 0 and kp.y >= 0:
                k[p, idx] = (kp.x * width, kp.y * height, float(getattr(kp, "score", 1.0)))

        for i, c in enumerate(OP18_FROM_COCO):
            if c is not None and i < len(r.body.keypoints):
                put(c, r.body.keypoints[i])
        for part, sl in ((r.left_hand, LHAND), (r.right_hand, RHAND)):
            for j, kp in enumerate((part or [])[:21]):
                put(sl.start + j, kp)
        for j, kp in enumerate((r.face or [])[:68]):
            put(FACE.start + j, kp)
    return k


class OpenPoseExtractor:
    """CMU OpenPose body (+ hands, face) through controlnet-aux, from annotator weights in a local folder
    (``body_pose_model.pth``, ``hand_pose_model.pth``, ``facenet.pth`` from lllyasviel/Annotators).  The
    files are read by ``torch.load`` with weights-only loading forced (no arbitrary pickle code runs)."""

    name = "openpose"

    def __init__(self, folder: str, hands: bool = True, face: bool = True, max_people: int = 4, device: str = "cpu"):
        need = ["body"] + (["hand"] if hands else []) + (["face"] if face else [])
        missing = [OPENPOSE_FILES[n] for n in need if not os.path.isfile(os.path.join(folder, OPENPOSE_FILES[n]))]
        if missing:
            raise MissingModelError("performer_pose", missing, [folder], "OpenPose annotator weights (lllyasviel/Annotators).")
        old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            from controlnet_aux.open_pose import Body, Face, Hand, OpenposeDetector

            det = OpenposeDetector(Body(os.path.join(folder, OPENPOSE_FILES["body"])),
                                   Hand(os.path.join(folder, OPENPOSE_FILES["hand"])) if hands else None,
                                   Face(os.path.join(folder, OPENPOSE_FILES["face"])) if face else None)
        except Exception as e:  # noqa: BLE001
            raise BadModelFileError(f"Could not load the OpenPose annotator weights in {folder}: {e}") from e
        finally:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old
        self.det, self.hands, self.face, self.max_people, self.folder = det, hands, face, int(max_people), folder

    def settings(self) -> str:
        return f"{self.name}:{self.folder}:{self.hands}:{self.face}:{self.max_people}"

    def __call__(self, frames: np.ndarray, fps: float = 8.0, callback: Callback = None) -> PoseSequence:
        frames = check_frames(frames)
        F, H, W, _ = frames.shape
        per = []
        for f in range(F):
            res = self.det.detect_poses(frames[f], include_hand=self.hands, include_face=self.face)
            per.append(openpose_result_to_133(res, W, H, self.max_people))
            if callback:
                callback(f + 1, F)
        people = max(p.shape[0] for p in per)
        k = np.zeros((F, people, N_POINTS, 3), np.float32)
        for f, p in enumerate(per):
            k[f, : p.shape[0]] = p
        return PoseSequence(k, W, H, fps)


# ----------------------------------------------------------------------------- cache


class PoseCache:
    """In-memory LRU of extraction results keyed by (extractor settings, frame content hash)."""

    def __init__(self, size: int = 16):
        self.size = size
        self.entries: "OrderedDict[str, PoseSequence]" = OrderedDict()
        self.hits = 0

    @staticmethod
    def key(extractor, frames: np.ndarray, fps: float) -> str:
        h = hashlib.sha256()
        h.update(extractor.settings().encode())
        h.update(str((frames.shape, str(frames.dtype), float(fps))).encode())
        h.update(np.ascontiguousarray(frames).tobytes())
        return h.hexdigest()

    def extract(self, extractor, frames: np.ndarray, fps: float = 8.0, callback: Callback = None) -> PoseSequence:
        frames = check_frames(frames)
        key = self.key(extractor, frames, fps)
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            if callback:
                callback(frames.shape[0], frames.shape[0])
            return self.entries[key].copy()
        out = extractor(frames, fps=fps, callback=callback)
        self.entries[key] = out.copy()
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return out


CACHE = PoseCache()
