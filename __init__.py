"""ComfyUI-Performer: animate a person from one photo or one short video along any pose sequence.

Importing this package is cheap and offline: it only declares the web directory and the V3
entry point.  Node modules (and through them torch/diffusers) load when ComfyUI asks for the
node list.
"""

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import PerformerExtension

    return PerformerExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
