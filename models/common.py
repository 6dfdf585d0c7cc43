"""Small helpers shared across the library (image conversion, ONNX sessions, gradients in inference mode)."""
from __future__ import annotations

import contextlib
from typing import Optional

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


class _Port:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class TorchScriptSession:
    """A TorchScript file behind the small part of onnxruntime's session API the pose extractors use (``get_inputs``,
    ``get_outputs``, ``run``): DWPose as comfyui_controlnet_aux ships it (``yolox_l.torchscript.pt``,
    ``dw-ll_ucoco_384_bs5.torchscript.pt``).  ``torch.jit.load`` reads the archive's graph and tensors with
    TorchScript's own unpickler (TorchScript types only, no Python callables); the graph itself is a program that
    runs, so only files from their publisher should be used (as with ONNX).  Inputs are cast to the module's parameter dtype; with ``fixed_batch`` (the "bs5" files,
    traced at batch 5) the rows are zero-padded to whole chunks of that size and the outputs cut back."""

    def __init__(self, path: str, input_shape, output_names, fixed_batch: Optional[int] = None, what: str = "TorchScript model"):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.module = torch.jit.load(path, map_location=device).eval()
        except Exception as e:  # noqa: BLE001
            raise BadModelFileError(f"Could not load {what} {path} as TorchScript: {type(e).__name__}: {e}") from e
        params = list(self.module.parameters())
        self.dtype = params[0].dtype if params else torch.float32
        self.device, self.path, self.what = device, path, what
        self.fixed_batch = fixed_batch
        self._inputs = [_Port("input", list(input_shape))]
        self._outputs = [_Port(n, None) for n in output_names]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, _names, feeds):
        import numpy as np
        import torch

        x = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values())))).to(self.device, self.dtype)
        n, chunk = x.shape[0], self.fixed_batch or x.shape[0]
        pad = (-n) % chunk
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                o = self.module(x[i:i + chunk])
                outs.append(list(o) if isinstance(o, (tuple, list)) else [o])
        if any(len(o) != len(self._outputs) for o in outs):
            raise BadModelFileError(f"{self.path} gives {len(outs[0])} outputs; the {self.what} gives "
                                    f"{len(self._outputs)} ({', '.join(p.name for p in self._outputs)}).")
        return [torch.cat([o[j] for o in outs])[:n].float().cpu().numpy() for j in range(len(self._outputs))]


def is_torchscript(path: str) -> bool:
    return path.endswith((".torchscript.pt", ".torchscript", ".pt"))


@contextlib.contextmanager
def gradients():
    """Autograd on, even inside ComfyUI's ``torch.inference_mode()`` node execution (training and fitting)."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield
