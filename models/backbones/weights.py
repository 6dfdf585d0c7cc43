"""Finding and reading weight files safely (no pickle), and recognising model families."""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Iterable, Sequence

import torch

from ..errors import BadModelFileError, MissingModelError

WEIGHT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def find_weight(folder: str, candidates: Sequence[str], search_dirs: Iterable[str], hint: str = "") -> str:
    """Return the first existing ``<dir>/<candidate>`` over ``search_dirs`` x ``candidates``.

    ``folder`` is the model-folder kind shown to the user (e.g. ``performer_pose``); the error
    raised when nothing is found names it, the directories searched and every file name tried.
    """
    dirs = [d for d in search_dirs if d]
    for d in dirs:
        for name in candidates:
            p = os.path.join(d, name)
            if os.path.exists(p):
                return p
    raise MissingModelError(folder, candidates, dirs, hint)


def read_state_dict(path: str, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects.

    ``.safetensors`` through safetensors; ``.ckpt/.pt/.pth/.bin`` through
    ``torch.load(weights_only=True)``.  Lightning-style ``{"state_dict": ...}`` wrappers are
    unwrapped.  Anything else (a corrupt or truncated file, a pickle with code) gives a
    :class:`BadModelFileError` naming the file.
    """
    if not os.path.isfile(path):
        raise MissingModelError(os.path.dirname(path) or ".", [os.path.basename(path)], [os.path.dirname(path)])
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device=device)
        else:
            sd = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise BadModelFileError(
            f"Could not read weight file '{path}': {type(exc).__name__}: {exc}. "
            "Expected a .safetensors file or a plain tensor checkpoint (pickled code is refused)."
        ) from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and sd and all(isinstance(v, dict) for v in sd.values()):  # {"image_proj": {...}, ...}
        sd = {f"{outer}.{k}": v for outer, inner in sd.items() for k, v in inner.items()}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadModelFileError(f"Weight file '{path}' does not hold a flat tensor state dict.")
    return sd


def file_hash(path: str, nbytes: int = 1 << 24) -> str:
    """Short content hash (first 16 MiB + size), enough to tell base models apart quickly."""
    h = hashlib.sha256()
    h.update(str(os.path.getsize(path)).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(nbytes))
    return h.hexdigest()[:16]


def layout_diff(want: Dict[str, tuple], got: Dict[str, tuple], absent_ok=()) -> tuple:
    """How a file's key → shape map ``got`` differs from the module's ``want``: (missing keys, except those starting
    with a prefix in ``absent_ok``; unexpected keys; keys with another shape), each sorted."""
    missing = sorted(k for k in set(want) - set(got) if not k.startswith(tuple(absent_ok)))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
    return missing, extra, wrong


def detect_family(sd: Dict[str, torch.Tensor], path: str = "") -> str:
    """Recognise a single-file checkpoint: ``sd15``, ``svd``, ``controlnet``, ``motion_module`` or raise (the error
    names ``path`` when given)."""
    try:
        return _detect_family(sd)
    except BadModelFileError as e:
        if not path:
            raise
        raise BadModelFileError(f"'{os.path.basename(path)}' ({path}): {e}") from e


def _detect_family(sd: Dict[str, torch.Tensor]) -> str:
    keys = sd.keys()
    if any(k.startswith("model.diffusion_model.") for k in keys):
        if any(".time_stack." in k for k in keys):
            return "svd"
        ctx = sd.get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        if any(k.startswith("conditioner.embedders.1") for k in keys) or "model.diffusion_model.label_emb.0.0.weight" in sd:
            raise BadModelFileError("This checkpoint looks like SDXL; the pack's backbones are SD1.5 (+AnimateDiff) and SVD.")
        if ctx is not None and ctx.shape[1] != 768:
            if ctx.shape[1] == 1024:
                raise BadModelFileError("This checkpoint looks like SD2.x (1024-d text context); SD1.5 is expected.")
        return "sd15"
    if any(k.startswith(("control_model.", "input_hint_block.")) or ".input_hint_block." in k for k in keys):
        return "controlnet"
    if any("motion_modules." in k for k in keys):
        return "motion_module"
    if any(k.startswith("controlnet_cond_embedding.") for k in keys):
        return "controlnet"
    if any(k.startswith("down_blocks.") and ".attentions." in k for k in keys):
        raise BadModelFileError("This file has diffusers UNet keys; load the whole diffusers folder instead of one file.")
    raise BadModelFileError("Unrecognised checkpoint: not an SD1.5, SVD, ControlNet or AnimateDiff motion-module file.")


def read_performer_file(path: str, kind: str, what: str, key: str = "performer.config"):
    """(metadata[key] parsed as JSON, state dict) of a pack-made safetensors file with ``performer.kind == kind``."""
    import json

    from safetensors import safe_open

    from ..errors import BadModelFileError

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise BadModelFileError(f"Could not read {what} {path}: {e}") from e
    if meta.get("performer.kind") != kind:
        raise BadModelFileError(f"{path} is not a Performer {what} (metadata performer.kind={meta.get('performer.kind')!r}; "
                                f"expected {kind!r}).")
    try:
        return json.loads(meta[key]), sd
    except (KeyError, ValueError) as e:
        raise BadModelFileError(f"{path} has no readable {key} metadata: {e}") from e


def write_performer_file(module, path: str, kind: str, config: dict, extra_metadata=None) -> None:
    """Save ``module``'s weights as safetensors with ``performer.kind`` / ``performer.config`` metadata."""
    import json

    from safetensors.torch import save_file

    meta = {"performer.kind": kind, "performer.config": json.dumps(config)}
    meta.update(extra_metadata or {})
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, path, metadata=meta)


def load_performer_module(cls, path: str, kind: str, what: str, device=None, dtype=None):
    """Build ``cls(**config)`` from a pack-made safetensors file and load its weights (frozen, eval mode)."""
    import torch

    from ..errors import BadModelFileError

    cfg, sd = read_performer_file(path, kind, what)
    module = cls(**cfg)
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise BadModelFileError(f"{what.capitalize()} {path} does not match its own config: {e}") from e
    return module.to(device or "cpu", dtype or torch.float32).eval().requires_grad_(False)
