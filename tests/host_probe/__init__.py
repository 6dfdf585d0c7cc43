"""Test-only custom nodes for the test host (never shipped): a probe that watches what the pack's native patches hold.

``TestProbePerformerPatches`` passes a MODEL through and keeps **weak** references to the patched clone, every patch object
of the pack found in its options, the tensors and modules those hold (reference latent, pose maps, pose controller).
``GET /performer_test/alive`` runs ``gc.collect()`` and reports how many are still alive, and how many models in
ComfyUI's loaded-model list carry one of the pack's patches, so a test can check what ``/free`` released."""
import gc
import weakref

from server import PromptServer

_REFS = []  # (what, weakref)
PACK_KEYS = ("performer_causal_reference", "performer_pose_guidance", "performer_identity", "performer_keyframe",
             "performer_latent_edit", "performer_released_pose_guider")


def _patches(model):
    found = []
    for kinds in model.wrappers.values():
        for key, fns in kinds.items():
            if key in PACK_KEYS:
                found += [getattr(f, "__self__", None) for f in fns]
    return [p for p in found if p is not None]


def _watch(what, obj):
    if obj is not None:
        _REFS.append((what, weakref.ref(obj)))


class TestProbePerformerPatches:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "probe"
    CATEGORY = "testing"

    def probe(self, model):
        _watch("patched MODEL", model)
        for p in _patches(model):
            _watch(type(p).__name__, p)
            for attr in ("latent", "controller", "skeleton", "smplx", "reference_pose", "source", "guider", "poses"):
                _watch(f"{type(p).__name__}.{attr}", getattr(p, attr, None))
            if getattr(p, "controller", None) is not None:
                for name, param in p.controller.named_parameters():
                    _watch(f"controller.{name}", param)
            for key, entries in (getattr(p, "kv", None) or {}).items():  # the identity patch's projected K/V
                for e in entries:
                    _watch(f"{type(p).__name__}.kv", e[0])
        return (model,)


class TestProbePerformerPipe:
    """Passes a PERFORMER_PIPE through and keeps weak references to the pipe and every torch module it holds."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pipe": ("PERFORMER_PIPE",)}}

    RETURN_TYPES = ("PERFORMER_PIPE",)
    FUNCTION = "probe"
    CATEGORY = "testing"

    def probe(self, pipe):
        _watch("pipe", pipe)
        for m in pipe.modules():
            _watch(f"pipe.{type(m).__name__}", m)
        return (pipe,)


def _held_pipe_module(patcher) -> bool:
    held = getattr(getattr(patcher, "model", None), "held", None)
    return held is not None and any(ref() is held for what, ref in _REFS if what.startswith("pipe."))


@PromptServer.instance.routes.get("/performer_test/alive")
async def alive(request):
    import comfy.model_management as mm
    from aiohttp import web

    gc.collect()
    live = sorted({what for what, ref in _REFS if ref() is not None})
    loaded = loaded_pipe = 0
    for lm in list(mm.current_loaded_models):
        m = lm.model
        if m is not None and _patches(m):
            loaded += 1
        if m is not None and _held_pipe_module(m):
            loaded_pipe += 1
    counts = {}
    for what, ref in _REFS:
        p = ref()
        if p is not None and hasattr(p, "runs"):
            counts[what] = {k: getattr(p, k) for k in ("runs", "writes", "reads", "last_calls") if hasattr(p, k)}
    return web.json_response({"watched": len(_REFS), "alive": live, "loaded_with_pack_patches": loaded,
                              "loaded_pipe_modules": loaded_pipe, "counts": counts})


class TestWanTextEmbedding:
    """Stand-in for Wan's text encoder: seeded random umt5-xxl-shaped embeddings (1, tokens, 4096) as CONDITIONING.
    Core builds umt5-xxl at its one real size (5.7 B parameters), which this machine cannot hold; the tiny Wan DiT reads
    4096-wide text like the real one."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 8, "min": 1})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, seed, tokens):
        import torch

        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn((1, tokens, 4096), generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"TestProbePerformerPatches": TestProbePerformerPatches, "TestProbePerformerPipe": TestProbePerformerPipe,
                       "TestWanTextEmbedding": TestWanTextEmbedding}
