"""`make demo`: run the bundled smoke workflow through a real ComfyUI (HTTP queue) on tiny models.

Until the synthetic-performer issue lands this is the smallest end-to-end workflow the pack has:
a tiny random SD1.5 + AnimateDiff motion module, built and seeded by tests/tiny_models.py, sampled
for 8 frames at 64x64.  The video is noise-like by design (random weights); the point is that the
whole path -- offline loading of real file layouts, sampling, decoding, saving -- runs.  Writes
out/demo/performer_demo.mp4 and out/demo/metrics.json."""
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


def main():
    out = os.path.join(REPO, "out", "demo")
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
