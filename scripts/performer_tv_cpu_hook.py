"""Make PyPI's CUDA-only torchvision importable next to a CPU-only torch build.

PyPI ships torchvision only as CUDA builds; their ``_C`` extension links libtorch_cuda and
fails to load against a CPU torch, after which ``torchvision/_meta_registrations.py`` calls
``register_fake("torchvision::nms")`` on an operator that was never defined and the import
dies.  transformers and diffusers import torchvision when it is installed, so the whole stack
breaks.

This hook is installed into the test host's site-packages by ``scripts/setup_env.sh`` together
with a one-line ``.pth`` file.  It waits for the first ``import torchvision``; only when torch is
a CPU build *and* torchvision's ``_C`` links CUDA libraries does it define the two operator
schemas (with a pure-torch CPU NMS) so the import succeeds.  torchvision's pure-Python parts
(transforms, models, ops that have Python fallbacks) then work; its C++ image codecs do not.
It is part of the test environment only; the pack itself never imports it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_LIB = None


def _links_cuda(pkg_dir: str) -> bool:
    for name in os.listdir(pkg_dir):
        if name.startswith("_C") and name.endswith(".so"):
            with open(os.path.join(pkg_dir, name), "rb") as fh:
                return b"libtorch_cuda" in fh.read()
    return False


def _nms(dets, scores, iou_threshold: float):
    import torch

    order = scores.argsort(descending=True)
    keep = []
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for pos, i in enumerate(order.tolist()):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[pos + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _prepare() -> None:
    global _LIB
    import torch

    if torch.version.cuda is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    if not _links_cuda(list(spec.submodule_search_locations)[0]):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _LIB = lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        _prepare()
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
