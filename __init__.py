"""ComfyUI-Performer: animate a person from one photo or one short video along any pose sequence.

Importing this package is cheap and offline: it only declares the web directory and the V3
entry point.  Node modules (and through them torch/diffusers) load when ComfyUI asks for the
node list.
"""

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"
# The oldest ComfyUI the pack runs on (every bundled workflow is run on it by scripts/newcomer_install.sh in CI).
MIN_COMFYUI = (0, 3, 52)


def _comfyui_version():
    """ComfyUI's version as a tuple, or None outside ComfyUI / where it is not stated."""
    try:
        import comfyui_version
    except ImportError:
        return None
    try:
        return tuple(int(x) for x in str(comfyui_version.__version__).split(".")[:3])
    except ValueError:
        return None


def unsupported_reason(version=None):
    """One line saying why this ComfyUI is too old for the pack, or None when it is supported (or unknown)."""
    v = _comfyui_version() if version is None else version
    if v is not None and v < MIN_COMFYUI:
        need, have = ".".join(map(str, MIN_COMFYUI)), ".".join(map(str, v))
        return f"ComfyUI-Performer needs ComfyUI >= {need} (the V3 node API it is written against); this is {have}. " \
               "Update ComfyUI; the pack registers no nodes until then."
    return None


async def comfy_entrypoint():
    reason = unsupported_reason()
    if reason:
        import logging

        logging.error(reason)
        raise RuntimeError(reason)
    from .nodes import PerformerExtension

    return PerformerExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
