"""Small helpers shared across the library (image conversion, ONNX sessions, gradients in inference mode)."""
from __future__ import annotations

import contextlib

import numpy as np

from .errors import BadModelFileError


def to_uint8(x) -> np.ndarray:
    """A torch tensor or array of images (…, H, W, C) in 0..1 (or already uint8) -> contiguous uint8 RGB."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


def onnx_session(path: str, what: str = "ONNX model"):
    """An onnxruntime session on the best available provider (CUDA first); a clear error if it cannot load."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    try:
        return ort.InferenceSession(path, providers=providers)
    except Exception as e:  # noqa: BLE001
        raise BadModelFileError(f"Could not load {what} {path}: {e}") from e


@contextlib.contextmanager
def gradients():
    """Autograd on, even inside ComfyUI's ``torch.inference_mode()`` node execution (training and fitting)."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield
