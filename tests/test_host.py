"""The pack inside a real ComfyUI (0.3.75) over HTTP: registration, templates, web files, workflows,
errors, interruption, determinism, and no network access."""
import glob
import json
import os
import subprocess
import threading
import time

import pytest

from host import REPO, VENV_PY, guarded_env, output_files
import tiny_models as tm
from workflow_tools import for_test_host, ui_to_api

PACK = "ComfyUI-Performer"
API_DIR = os.path.join(REPO, "tests", "workflows")
UI_FILES = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))


def load_api(name):
    with open(os.path.join(API_DIR, name + ".api.json")) as fh:
        return json.load(fh)


def pack_nodes(object_info):
    return {k: v for k, v in object_info.items() if v.get("python_module", "").endswith(PACK)}


def test_object_info_lists_nodes_with_tooltips(host):
    info = host.get("/object_info")
    nodes = pack_nodes(info)
    assert {"PerformerLoadBackbone", "PerformerAddMotionModule", "PerformerAddControlNet", "PerformerSampleVideo",
            "PerformerAddPoseController", "PerformerAddIdentityAdapter", "PerformerEncodeReference", "PerformerSamplerOptions",
            "PerformerAnimate", "PerformerDecode", "PerformerPoseFromKeypoints", "PerformerPoseToKeypoints",
            "PerformerLoadPose", "PerformerSavePose", "PerformerCleanPose", "PerformerRetargetPose",
            "PerformerDrawPose", "PerformerFitBody", "PerformerLoadBodyParams", "PerformerTransferShape",
            "PerformerRenderBody", "PerformerBodyFlow", "PerformerBodyToPose", "PerformerExtractPoseMediaPipe",
            "PerformerExtractPoseDWPose", "PerformerExtractPoseOpenPose", "PerformerDensePose",
            "PerformerSelectReferenceFrame", "PerformerFlowPreview", "PerformerPersonalise", "PerformerLoadPersonalised",
            "PerformerPoseCrafter", "PerformerRefineIVR", "PerformerSyntheticPerformer", "PerformerMetrics"} <= set(nodes)
    for name, n in nodes.items():
        assert name.startswith("Performer") and n["category"].startswith("Performer/"), name
        assert n["description"], name
        for section in ("required", "optional"):
            for inp, spec in n["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
        assert (n["output_node"] and not n["output"]) or (n["output_tooltips"] and all(n["output_tooltips"])), \
            f"{name} outputs need tooltips"
    choices = info["PerformerLoadBackbone"]["input"]["required"]["model"][1]["options"]
    assert "tiny_sd15.safetensors" in choices and "tiny_svd" in choices  # single file + diffusers folder


def test_templates_and_web_files_are_served(host):
    templates = host.get("/workflow_templates")
    names = {os.path.splitext(os.path.basename(p))[0] for p in UI_FILES}
    assert PACK in templates and names <= set(templates[PACK])
    js = [e for e in host.get("/extensions") if e.startswith(f"/extensions/{PACK}/")]
    assert js, "pack web extension not listed"
    for path in js:
        assert host.request(path)[0] == 200


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: os.path.basename(p))
def test_workflow_ui_and_api_twins_in_sync_and_run(host, ui_path, request):
    from host import ADE_DIR, ADE_MISSING

    name = os.path.splitext(os.path.basename(ui_path))[0]
    api = load_api(name)
    if name in tm.RELEASED_WORKFLOWS:
        if os.environ.get("PERFORMER_HOST_COMFY"):  # the newcomer job (scripts/newcomer_install.sh)
            pytest.skip("the released-weight workflows need several GB of real-size stand-ins; they run in the main job "
                        "(make test) on the tested ComfyUI, and use only core nodes this ComfyUI has")
        request.getfixturevalue("released_files")
    if any(v["class_type"].startswith("ADE_") for v in api.values()):
        if not os.path.isdir(ADE_DIR):
            pytest.skip(ADE_MISSING)
        if not any(k.startswith("ADE_") for k in host.get("/object_info")):  # ADE's own ComfyUI requirements
            pytest.skip(f"AnimateDiff-Evolved is mounted but did not load in this ComfyUI ({host.comfy_version()})")
    info = host.get("/object_info")
    lacking = sorted({v["class_type"] for v in api.values()} - set(info))
    if lacking and not any(n.startswith("Performer") for n in lacking):  # core nodes a newer ComfyUI has
        pytest.skip(f"this ComfyUI ({host.comfy_version()}) has no {', '.join(lacking)} (newer core nodes this workflow uses)")
    with open(ui_path) as fh:
        ui = json.load(fh)
    assert ui_to_api(ui, info) == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    res = host.run(for_test_host(name, api), timeout=600)  # real-size-only loaders replaced (workflow_tools.REAL_SIZE_ONLY)
    assert res["status"] == "execution_success", json.dumps(res["events"][-1])[:2000]
    assert output_files(res), "workflow produced no output files"
    assert any(e["type"] == "progress" for e in res["events"]), "no progress reported"


def _sample_prompt(**overrides):
    api = load_api("performer_text2video_smoke")
    api["3"]["inputs"].update(overrides)
    for k in ("4", "5"):
        api.pop(k)
    return api


def _probed_sample_prompt(seed):
    """The 2-frame text-to-video graph with the test-only pipe probe (tests/host_probe) between the motion module and
    Sample Video."""
    api = _sample_prompt(seed=seed, frames=2)
    api["90"] = {"class_type": "TestProbePerformerPipe", "inputs": {"pipe": ["2", 0]}}
    api["3"]["inputs"]["pipe"] = ["90", 0]
    return api


def test_node_error_arrives_as_execution_error(host):
    prompt = _sample_prompt()
    prompt["1"]["inputs"]["model"] = "tiny_svd"  # an SVD diffusers folder cannot take an AnimateDiff motion module
    res = host.run(prompt, timeout=300)
    assert res["status"] == "execution_error"
    err = [e for e in res["events"] if e["type"] == "execution_error"][0]["data"]
    assert err["node_type"] == "PerformerAddMotionModule"
    assert "Motion modules work with SD1.5 pipes; this pipe is svd" in err["exception_message"]


def test_interrupt_stops_a_long_node_and_next_prompt_runs(host):
    started = threading.Event()
    timing = {}

    def on_event(ev):
        if ev["type"] == "progress" and ev["data"].get("node") == "3" and not started.is_set():
            started.set()
            host.interrupt()
            timing["t0"] = time.time()  # interrupt accepted by the server
        if ev["type"] == "execution_interrupted":
            timing["t1"] = time.time()

    res = host.run(_sample_prompt(steps=400, seed=7, frames=2), timeout=300, on_event=on_event)
    assert started.is_set() and res["status"] == "execution_interrupted"
    assert timing["t1"] - timing["t0"] < 2.0, f"interrupt took {timing['t1'] - timing['t0']:.2f} s"
    print(f"interrupt latency {timing['t1'] - timing['t0']:.3f} s")
    ok = host.run(_sample_prompt(seed=8), timeout=300)
    assert ok["status"] == "execution_success"


def test_same_seed_gives_identical_outputs(host):
    prompt = _sample_prompt(seed=1234, frames=4)
    first = host.run(prompt)
    host.free()  # drop ComfyUI's output cache so the graph really runs again
    time.sleep(0.5)
    second = host.run(prompt)
    assert first["status"] == second["status"] == "execution_success"
    assert not any(e["type"] == "execution_cached" and "3" in e["data"].get("nodes", []) for e in second["events"])
    a = [host.view(f) for f in output_files(first)]
    b = [host.view(f) for f in output_files(second)]
    assert len(a) == 4 and a == b


def test_same_seed_same_bytes_for_every_scheduler_also_after_other_nodes_reseeded(host):
    """Every scheduler of Sampler Options (the stochastic euler_a included) gives byte-identical frames for the same seed,
    also when another graph ran in between: core's KSampler reseeds torch's global RNG (``prepare_noise`` calls
    ``torch.manual_seed``) and draws from it, which changed euler_a's frames before the pack drew its steps from the
    run's own seeded generator."""
    from performer_pkg.models.sampling.sampler import SD15_SCHEDULERS

    api = load_api("performer_animatediff_reference_controlnet")
    for k in ("11", "12"):
        api.pop(k)
    api["13"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "performer/seeds"}}
    api["10"]["inputs"].update(seed=11, steps=4, frames=8)  # pndm needs 4 steps; one context window of 8 frames
    other = load_api("performer_native_sd15_reference")

    def run(name):
        api["9"]["inputs"]["scheduler"] = name
        res = host.run(api, timeout=600)
        assert res["status"] == "execution_success", (name, res["events"][-1])
        # the sampler really ran (not ComfyUI's output cache): the scheduler changes from one run to the next
        assert "10" in {e["data"].get("node") for e in res["events"] if e["type"] == "executing"}, (name, "cached")
        return [host.view(f) for f in output_files(res)]

    host.free()  # drop ComfyUI's output cache so the pack's graph really runs
    first = {name: run(name) for name in SD15_SCHEDULERS}
    other["8"]["inputs"]["seed"] = 1000  # core's KSampler: prepare_noise reseeds torch's global RNG
    assert host.run(other, timeout=600)["status"] == "execution_success"
    for name in SD15_SCHEDULERS:
        again = run(name)
        assert first[name] and first[name] == again, f"{name}: the same seed gave other frames after another graph ran"


def test_free_releases_the_pipe_and_the_next_run_gives_the_same_bytes(host):
    """The pipe lives under ComfyUI's model management (nodes/_common.use_pipe): after a run its modules are in
    ComfyUI's loaded-model list; after POST /free (unload models, free the node cache) no module of the pipe is alive
    (weak references from the test-only probe node, tests/host_probe) and the list holds none of them; the next run
    loads the pipe again and gives the same bytes."""
    api = _probed_sample_prompt(seed=21)

    def run():
        res = host.run(api, timeout=600)
        assert res["status"] == "execution_success", res["events"][-1]
        return [host.view(f) for f in output_files(res)]

    host.free()
    first = run()
    now = host.get("/performer_test/alive")
    held = [w for w in now["alive"] if w.startswith("pipe")]
    assert {"pipe", "pipe.UNetMotionModel", "pipe.AutoencoderKL", "pipe.CLIPTextModel"} <= set(held), now
    assert now["loaded_pipe_modules"] >= 3, now  # UNet, VAE, text encoder (+ the motion adapter) are ComfyUI's
    host.free()
    deadline = time.time() + 60
    while time.time() < deadline and ([w for w in now["alive"] if w.startswith("pipe")] or now["loaded_pipe_modules"]):
        time.sleep(1)
        now = host.get("/performer_test/alive")
    assert not [w for w in now["alive"] if w.startswith("pipe")] and now["loaded_pipe_modules"] == 0, now
    assert run() == first and len(first) == 2


def test_offload_after_use_leaves_the_pipe_alive_but_not_loaded_and_gives_the_same_frames(host):
    """Load Backbone's memory choice: with "offload after use" the pipe's modules are back off ComfyUI's loaded-model
    list after the node that used them (the pipe itself stays in ComfyUI's cache), and the frames' pixels are the same
    bytes as with "keep loaded" (the PNG files differ only in the prompt they embed)."""
    import io

    import numpy as np
    from PIL import Image

    def run(memory):
        api = _probed_sample_prompt(seed=23)
        api["1"]["inputs"]["memory"] = memory
        host.free()
        time.sleep(0.5)
        res = host.run(api, timeout=600)
        assert res["status"] == "execution_success", res["events"][-1]
        pixels = [np.asarray(Image.open(io.BytesIO(host.view(f)))).tobytes() for f in output_files(res)]
        return pixels, host.get("/performer_test/alive")

    kept, now = run("keep loaded")
    assert now["loaded_pipe_modules"] >= 3, now
    offloaded, now = run("offload after use")
    assert "pipe" in now["alive"] and now["loaded_pipe_modules"] == 0, now
    assert offloaded == kept and len(kept) == 2


def test_refine_ivr_takes_sampler_options(host):
    """Refine with IVR (the pipe's) re-generates with the Sampler Options it is given, not fixed settings: options
    asking for pndm with the node's 3 steps reach the re-generation and get pndm's clear error there."""
    api = load_api("performer_ivr_refine")
    api["40"] = {"class_type": "PerformerSamplerOptions", "inputs": {"window": 16, "stride": 8, "scheduler": "pndm",
                 "reference_strength": 1.0, "reference_uncond": "auto", "reference_pose": True, "controlnet_scale": 1.0,
                 "pose_scale": 1.0, "image_scale": 1.0, "face_scale": 1.0, "fps": 7, "motion_bucket_id": 127, "min_cfg": 1.0}}
    api["11"]["inputs"].update(options=["40", 0], steps=3)
    res = host.run(api, timeout=600)
    assert res["status"] == "execution_error"
    err = [e for e in res["events"] if e["type"] == "execution_error"][0]["data"]
    assert err["node_id"] == "11" and "pndm scheduler needs at least 4 steps" in err["exception_message"], err


def test_no_network_from_host(host):
    # after all workflows above ran in the host: nothing tried to leave the machine
    log = host.netguard_log
    assert not os.path.exists(log) or open(log).read() == ""


def test_import_makes_no_network_connection(tmp_path):
    log = tmp_path / "net.log"
    code = ("import sys; sys.path.insert(0, 'tests'); import pack_alias; pack_alias.register_package(); "
            "import performer_pkg.models.backbones.loaders, performer_pkg.models.sampling.sampler, performer_pkg.models.backbones.convert_svd; print('ok')")
    out = subprocess.run([VENV_PY, "-c", code], cwd=REPO, env=guarded_env(log), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    assert not log.exists() or log.read_text() == ""


def test_models_package_never_imports_comfyui():
    for path in glob.glob(os.path.join(REPO, "models", "**", "*.py"), recursive=True):
        src = open(path).read()
        for bad in ("import comfy", "from comfy", "import folder_paths", "comfy_api", "import server", "import nodes"):
            assert bad not in src, f"{path} imports ComfyUI ({bad})"


def _error_of(host, api):
    res = host.run(api, timeout=300)
    assert res["status"] == "execution_error", res["status"]
    return next(e for e in res["events"] if e["type"] == "execution_error")["data"]["exception_message"]


@pytest.mark.parametrize("case,expected", [
    ("poses_shorter", "skeleton maps has 12 frames but 20 frames are sampled"),
    ("skeleton_aspect", "skeleton maps are 64×48 but the video (the reference image) is 64×64"),
    ("no_skeleton_for_controlnet", "ControlNet but no skeleton maps"),
    ("wrong_family", "Motion modules work with SD1.5 pipes; this pipe is svd"),
])
def test_reference_workflow_bad_inputs(host, case, expected):
    api = load_api("performer_animatediff_reference_controlnet")
    if case == "poses_shorter":
        api["10"]["inputs"]["frames"] = 20
    elif case == "skeleton_aspect":
        api["8"]["inputs"].update(width=64, height=48)
    elif case == "no_skeleton_for_controlnet":
        del api["10"]["inputs"]["skeleton"]
        api["10"]["inputs"]["frames"] = 4
    elif case == "wrong_family":
        api["1"]["inputs"]["model"] = "tiny_svd.safetensors"
    assert expected in _error_of(host, api)


def test_sampler_options_chain_without_mutating_their_input(host):
    """Two Animate nodes share one options node; a second options node chained after it changes only its own branch."""
    api = load_api("performer_animatediff_reference_controlnet")
    api["13"] = {"class_type": "PerformerSamplerOptions", "inputs": dict(api["9"]["inputs"], options=["9", 0], reference_strength=0.0)}
    api["14"] = {"class_type": "PerformerAnimate", "inputs": dict(api["10"]["inputs"], options=["13", 0])}
    api["15"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "performer/no_ref"}}
    api["16"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "performer/with_ref"}}
    res = host.run(api, timeout=600)
    assert res["status"] == "execution_success"
    outs = res["history"]["outputs"]
    a = [host.view(e) for e in outs["15"]["images"]]
    b = [host.view(e) for e in outs["16"]["images"]]
    assert len(a) == len(b) == 12 and a != b  # reference_strength 0 in the chained branch only


def test_pose_workflow_bad_inputs(host):
    from performer_pkg.models.pose.sequence import empty, save_json

    save_json(empty(1, 512, 512), os.path.join(host.workdir, "input", "performer_empty_pose.json"))
    api = load_api("performer_pose_retarget")
    api["2"]["inputs"]["file"] = "performer_empty_pose.json"
    assert "No person found in the reference pose" in _error_of(host, api)
    api = load_api("performer_pose_retarget")
    api["1"]["inputs"]["file"] = "performer_empty_pose.json"
    assert "needs both shoulders or both hips" in _error_of(host, api)
    api = load_api("performer_pose_extract_retarget")
    from PIL import Image

    Image.new("RGB", (128, 128), (20, 20, 20)).save(os.path.join(host.workdir, "input", "performer_empty.png"))
    api["2"]["inputs"]["image"] = "performer_empty.png"  # a blank frame: nobody there
    assert "No person found in any frame of images" in _error_of(host, api)


def test_body_workflow_bad_inputs(host):
    import numpy as np

    from performer_pkg.models.pose.sequence import save_json
    from example_inputs import hand_made_pose

    save_json(hand_made_pose(), os.path.join(host.workdir, "input", "performer_one_frame.json"))
    api = load_api("performer_body_from_poses")
    api["1"]["inputs"]["file"] = "performer_one_frame.json"
    for k in ("7", "8", "9", "6"):
        del api[k]
    assert "Human flow needs at least 2 body frames; got 1" in _error_of(host, api)
    np.savez(os.path.join(host.workdir, "input", "performer_bad_params.npz"), body_pose=np.zeros((3, 63)), transl=np.zeros((2, 3)))
    api = {"1": {"class_type": "PerformerLoadBodyParams", "inputs": {"file": "performer_bad_params.npz",
                 "body_model": "embedded (procedural stand-in, not SMPL-X)", "width": 256, "height": 256, "fov": 40.0, "fps": 8.0}},
           "2": {"class_type": "PerformerRenderBody", "inputs": {"body": ["1", 0], "width": 0, "height": 0}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "performer/x"}}}
    assert "lack 'global_orient'" in _error_of(host, api)


def test_synthetic_performer_and_metrics_nodes(host):
    """Ground truth against itself: PSNR 100, IoU ~1; the metrics JSON comes back in the node's UI output."""
    api = {"1": {"class_type": "PerformerSyntheticPerformer", "inputs": {"seed": 1, "character": 2, "motion": "dance", "frames": 4,
                                                                      "size": 64, "stripes": True, "fps": 8.0}},
           "2": {"class_type": "PerformerMetrics", "inputs": {"generated": ["1", 0], "ground_truth": ["1", 0], "gt_mask": ["1", 1],
                                                            "background": ["1", 5], "gt_pose": ["1", 2], "gt_flow": ["1", 4]}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "performer/metrics_sheet"}}}
    res = host.run(api, timeout=300)
    assert res["status"] == "execution_success", res["events"][-1]
    m = json.loads(res["history"]["outputs"]["2"]["text"][0])
    assert m["psnr"] == 100.0 and m["mask_iou"] > 0.9 and m["flicker"] == 0.0 and "warp_error" in m and "face_psnr" in m
