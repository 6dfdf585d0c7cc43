import importlib.util
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True, warn_only=True)

# Network guard for the pytest process itself (the ComfyUI host loads the same module as sitecustomize).
_NETLOG = os.path.join(HERE, ".netguard-pytest.log")
os.environ.setdefault("PERFORMER_NETGUARD_LOG", _NETLOG)
os.environ["HF_HUB_OFFLINE"] = "1"
_spec = importlib.util.spec_from_file_location("performer_netguard", os.path.join(HERE, "netguard", "sitecustomize.py"))
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)

import pack_alias  # noqa: E402

pack_alias.register_package()


@pytest.fixture(scope="session")
def models_tree(tmp_path_factory):
    import tiny_models

    root = str(tmp_path_factory.mktemp("models"))
    paths = tiny_models.build_models_tree(root)
    tiny_models.add_demo_models(root)  # the demo workflow's small trained model
    from host import ADE_DIR

    if os.path.isdir(ADE_DIR):  # the AnimateDiff-Evolved workflow's real-size random files (≈ 3.8 GB, ≈ 40 s)
        paths.update({f"ade_{k}": os.path.relpath(v, root) for k, v in tiny_models.ade_models(root).items()})
    return root, {k: os.path.join(root, v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def released_files(models_tree):
    """The real-size files in the released layouts the two released-weight workflows name (several GB: Champ's UNets,
    motion module, encoders and CLIP ViT-L, with the ADE files; MimicMotion_1-1.pth), built only for the tests that
    run them (tiny_models.champ_models, mimicmotion_checkpoint)."""
    import tiny_models
    from host import ADE_DIR

    root = models_tree[0]
    out = {"mimicmotion": tiny_models.mimicmotion_checkpoint(root)}
    if os.path.isdir(ADE_DIR):
        out.update(tiny_models.champ_models(root))
    return out


@pytest.fixture(scope="session")
def host(models_tree, tmp_path_factory):
    from host import ComfyHost

    work = str(tmp_path_factory.mktemp("host"))
    from host import ADE_DIR

    # AnimateDiff-Evolved (../shared/thirdparty) is mounted beside the pack when present, as users combine them
    h = ComfyHost(work, models_tree[0], extra_nodes=(ADE_DIR,) if os.path.isdir(ADE_DIR) else ()).start()
    import example_inputs

    example_inputs.write_inputs(os.path.join(work, "input"))
    yield h
    h.stop()
    assert h.proc.poll() is not None, "ComfyUI host still running after stop()"


@pytest.fixture(scope="session")
def ad(models_tree):
    """The tiny AnimateDiff pipe (SD1.5 single file + motion module), shared read-only by the test modules."""
    import tiny_models as tm
    from performer_pkg.models.backbones import loaders as backbones

    tok = [os.path.join(tm.COMFY_DIR, "comfy", "sd1_tokenizer")]
    return backbones.with_motion_module(backbones.load_sd15(models_tree[1]["sd15_file"], device="cpu", tokenizer_dirs=tok),
                                        models_tree[1]["mm_file"])
