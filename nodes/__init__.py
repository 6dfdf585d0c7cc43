"""ComfyUI glue for ComfyUI-Performer: one module per stage, registered through the V3 extension API."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension

from ._common import register_folders

register_folders()

# (comfy_api's ``io`` is deliberately not imported here: this package has its own ``io`` stage module.)
from . import io as io_nodes  # noqa: E402  (folders must be registered before combos are listed)
from . import body, evaluate, native, native_released, personalise, pose, reference, refine, sampling  # noqa: E402

ALL_NODES = [*io_nodes.NODES, *pose.NODES, *body.NODES, *reference.NODES, *sampling.NODES, *personalise.NODES, *refine.NODES, *evaluate.NODES,
             *native.NODES, *native_released.NODES]


class PerformerExtension(ComfyExtension):
    async def get_node_list(self):
        return list(ALL_NODES)
