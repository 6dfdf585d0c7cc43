"""`make demo`: the performer demo through a real ComfyUI (HTTP queue).

With `assets/demo_models` (the small model scripts/train_demo_models.py trains on synthetic performers) it animates a
held-out synthetic performer from its first frame, its poses and its SMPL-X bodies (causal reference attention, the
reference carrying its own skeleton and SMPL-X render, + the pose controller on skeleton maps and SMPL-X semantic
renders), and once plainly (the same pose guidance, no reference attention), and scores both against the ground
truth.  Without that folder it falls back to the smoke workflow on tiny random weights.  Writes
out/demo/performer_demo.mp4, contact sheets, the README's picture (demo_contact_sheet.png: ground truth, with reference
attention, plain) and out/demo/metrics.json."""
import io
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import numpy as np  # noqa: E402
import pack_alias  # noqa: E402
from PIL import Image  # noqa: E402

pack_alias.register_package()
from host import ComfyHost, output_files  # noqa: E402


DEMO_MODELS = os.path.join(REPO, "assets", "demo_models")


def figure(rows, scale: int = 2, every: int = 2, count: int = 8) -> np.ndarray:
    """The README's picture: one labelled row per video (every ``every``-th frame, ``count`` of them), ``scale``× nearest."""
    import cv2

    lines = []
    for name, v in rows.items():
        strip = np.concatenate(list(np.asarray(v, np.uint8)[::every][:count]), 1)
        strip = np.ascontiguousarray(strip.repeat(scale, 0).repeat(scale, 1))
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        cv2.rectangle(strip, (0, 0), (tw + 10, th + 12), (0, 0, 0), -1)
        cv2.putText(strip, name, (5, th + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(strip)
    return np.concatenate(lines, 0)


def performer_demo(out):
    """The demo on the model trained on synthetic performers (assets/demo_models, made by
    scripts/train_demo_models.py): animate a held-out performer from its first frame and its poses, with and without
    causal reference attention (the same pose guidance in both), and score both against the ground truth."""
    import tiny_models

    models = os.path.join(out, "models_trained")
    shutil.rmtree(models, ignore_errors=True)
    tiny_models.add_demo_models(models)
    with open(os.path.join(REPO, "tests", "workflows", "performer_demo_synthetic.api.json")) as fh:
        prompt = json.load(fh)
    plain = json.loads(json.dumps(prompt))
    plain["20"] = {"class_type": "PerformerSamplerOptions", "inputs": {"window": 16, "stride": 8, "scheduler": "ddim",
                   "reference_strength": 0.0, "reference_uncond": "auto", "reference_pose": True, "controlnet_scale": 1.0,
                   "pose_scale": 1.0, "image_scale": 1.0, "face_scale": 1.0, "fps": 7, "motion_bucket_id": 127, "min_cfg": 1.0}}
    plain["8"]["inputs"]["options"] = ["20", 0]  # plain: the same pose guidance, no reference attention
    plain["11"]["inputs"]["filename_prefix"] = "performer/demo_plain"
    plain["12"]["inputs"]["filename_prefix"] = "performer/demo_plain_sheet"
    # exact frames for the figure: each run's video, and the ground truth its performer node generated
    for p, prefix in ((prompt, "performer/demo_frames"), (plain, "performer/demo_plain_frames")):
        p["30"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    prompt["31"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "performer/demo_truth"}}
    work = os.path.join(out, "host")
    shutil.rmtree(work, ignore_errors=True)
    results, frames = {}, {}
    t0 = time.time()
    with ComfyHost(work, models) as host:
        t1 = time.time()
        for name, p in (("pack", prompt), ("plain", plain)):
            res = host.run(p, timeout=900)
            if res["status"] != "execution_success":
                print(json.dumps(res["events"][-1], indent=1)[:4000])
                sys.exit(1)
            results[name] = json.loads(res["history"]["outputs"]["9"]["text"][0])
            files = output_files(res)
            video = next(f for f in files if f["filename"].endswith(".mp4"))
            sheet = next(f for f in files if "sheet" in f["filename"])
            suffix = "" if name == "pack" else "_plain"
            with open(os.path.join(out, f"performer_demo{suffix}.mp4"), "wb") as fh:
                fh.write(host.view(video))
            with open(os.path.join(out, f"contact_sheet{suffix}.png"), "wb") as fh:
                fh.write(host.view(sheet))
            for key, part in ((name, "_frames"), ("truth", "_truth")):
                pngs = sorted((f for f in files if part in f["filename"]), key=lambda f: f["filename"])
                if pngs:
                    frames[key] = np.stack([np.asarray(Image.open(io.BytesIO(host.view(f))).convert("RGB")) for f in pngs])
        t2 = time.time()
    with open(os.path.join(DEMO_MODELS, "train_log.json")) as fh:
        train = json.load(fh)
    spec = next(n["inputs"] for n in prompt.values() if n["class_type"] == "PerformerSyntheticPerformer")
    from performer_pkg.models.evaluate.performer import split_of

    Image.fromarray(figure({"ground truth": frames["truth"], "reference attention": frames["pack"],
                            "plain (no reference)": frames["plain"]})).save(os.path.join(out, "demo_contact_sheet.png"))

    metrics = {"workflow": "tests/workflows/performer_demo_synthetic.api.json",
               "models": f"assets/demo_models (scripts/train_demo_models.py, seed {train['seed']}): {train['train_data']}",
               "held_out": f"performer seed {spec['seed']}, identity {spec['character']} ({split_of(spec['seed'], spec['character'])} "
                           f"range: never used in training), {spec['motion']}, {spec['frames']} frames, {spec['size']} px; "
                           "reference = its frame 0",
               "pack_settings": "causal reference attention (the reference with its own skeleton and SMPL-X render) + "
                                "pose controller on skeleton maps and SMPL-X semantic renders",
               "plain_settings": "the same pose controller inputs, no reference attention",
               "host_start_s": round(t1 - t0, 2), "workflows_s": round(t2 - t1, 2), **results}
    return metrics


def main():
    out = os.path.join(REPO, "out", "demo")
    if os.path.isdir(DEMO_MODELS):
        os.makedirs(out, exist_ok=True)
        metrics = performer_demo(out)
        with open(os.path.join(out, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        print(json.dumps(metrics, indent=1))
        print(f"\nvideo:   {os.path.join(out, 'performer_demo.mp4')}\nmetrics: {os.path.join(out, 'metrics.json')}")
        return
    models = os.path.join(out, "models")
    if not os.path.isfile(os.path.join(models, "checkpoints", "tiny_sd15.safetensors")):
        import tiny_models

        shutil.rmtree(models, ignore_errors=True)
        tiny_models.build_models_tree(models)
    with open(os.path.join(REPO, "tests", "workflows", "performer_text2video_smoke.api.json")) as fh:
        prompt = json.load(fh)
    work = os.path.join(out, "host")
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    with ComfyHost(work, models) as host:
        t1 = time.time()
        res = host.run(prompt, timeout=900)
        t2 = time.time()
        if res["status"] != "execution_success":
            print(json.dumps(res["events"][-1], indent=1)[:4000])
            sys.exit(1)
        files = output_files(res)
        video = next(f for f in files if f["filename"].endswith(".mp4"))
        frames = [np.asarray(Image.open(__import__("io").BytesIO(host.view(f)))).astype(np.float32) / 255
                  for f in files if f["filename"].endswith(".png")]
        with open(os.path.join(out, "performer_demo.mp4"), "wb") as fh:
            fh.write(host.view(video))
    v = np.stack(frames)
    metrics = {
        "workflow": "tests/workflows/performer_text2video_smoke.api.json",
        "models": "tiny random SD1.5 + AnimateDiff motion module (tests/tiny_models.py, seeded)",
        "frames": int(v.shape[0]), "height": int(v.shape[1]), "width": int(v.shape[2]),
        "host_start_s": round(t1 - t0, 2), "workflow_s": round(t2 - t1, 2),
        "mean_abs_frame_difference": float(np.abs(np.diff(v, axis=0)).mean()),
        "note": "random weights: no visual quality is claimed; the synthetic-performer issue adds real metrics",
    }
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
    print(json.dumps(metrics, indent=1))
    print(f"\nvideo:   {os.path.join(out, 'performer_demo.mp4')}\nmetrics: {os.path.join(out, 'metrics.json')}")


if __name__ == "__main__":
    main()
