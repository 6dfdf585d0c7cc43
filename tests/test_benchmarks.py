"""The reference-sampling benchmarks still run (smoke runs at toy sizes; speed itself is for benchmarks/, not tests).

Each script runs as a subprocess, as a user would run it, writing into a temporary BENCH_OUT folder so the results
in out/benchmarks are left alone; the checks are on what the script reports."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest
from host import guarded_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, script, *args):
    log = tmp_path / "netguard.log"
    env = guarded_env(log, BENCH_OUT=str(tmp_path), BENCH_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not log.exists(), log.read_text()  # offline: no connection attempt at all
    return p


def _result(tmp_path, name):
    with open(tmp_path / f"{name}.json") as f:
        return json.load(f)


@pytest.mark.parametrize("backbone", ["animatediff", "svd"])
def test_reference_overhead_runs_one_reference_pass(tmp_path, backbone):
    _run(tmp_path, "reference_overhead.py", "--backbone", backbone, "--frames", "2", "--steps", "2", "--repeats", "1",
         "--size", "16")
    r = _result(tmp_path, f"reference_overhead_{backbone}")
    assert r["reference_passes_per_run"] == 1.0  # once per run, not once per step
    assert r["plain_s"] > 0 and r["reference_s"] > 0
    t = {k: statistics.median(v) for k, v in r["all_times"].items()}
    assert r["ratio"] == round(t["reference"] / t["plain"], 3)
    assert 0 < r["reference_pass_s"] < r["reference_s"] and r["ratio_without_reference_pass"] < r["ratio"]
    assert (r["frames"], r["steps"], r["size"], r["realsize"]) == (2, 2, 16, False)


def test_gpu_realsize_tiny_smoke(tmp_path):
    _run(tmp_path, "gpu_realsize.py", "--tiny")
    r = _result(tmp_path, "gpu_realsize_tiny")
    assert r["device"] == "cpu" and r["tiny"]
    for backbone in ("animatediff", "svd"):
        res = r["results"][backbone]
        assert res["plain"]["seconds"] > 0 and res["reference"]["seconds"] > 0 and res["decode_s_per_frame"] > 0
        assert res["reference_ratio"] == round(res["reference"]["seconds"] / res["plain"]["seconds"], 3)


def test_attention_heads_reports_every_head_width(tmp_path):
    _run(tmp_path, "attention_heads.py", "--tokens", "32", "--batch", "2", "--repeats", "1")
    r = _result(tmp_path, "attention_heads")
    assert sorted(r["results"]) == ["head_dim_16", "head_dim_4", "head_dim_40", "head_dim_8"]
    for row in r["results"].values():
        assert row["plain"]["ms"] > 0 and row["with_reference"]["gflop_s"] > 0


def test_native_reference_overhead_counts_one_pass_per_run(tmp_path):
    _run(tmp_path, "native_reference_overhead.py", "--frames", "2", "--steps", "2", "--repeats", "1", "--size", "16")
    r = _result(tmp_path, "native_reference_overhead")
    assert r["reference_passes_per_run"] == 1.0 and r["runs"] == 2  # the patched warm-up + one timed run, one pass each
    # (the ratio is of the unrounded medians; the seconds are rounded to 1 ms)
    assert r["ratio"] == pytest.approx(r["reference_s"] / r["plain_s"], abs=0.001 * (1 + r["ratio"]) / r["plain_s"] + 1e-3)
    assert r["attention_kernel"] == "attention_pytorch"


def test_native_wan_reference_overhead_counts_one_pass_per_run(tmp_path):
    _run(tmp_path, "native_wan_reference_overhead.py", "--frames", "2", "--latent", "8", "--steps", "2", "--layers", "1",
         "--repeats", "1")
    r = _result(tmp_path, "native_wan_reference_overhead")
    assert r["reference_passes_per_run"] == 1.0 and r["runs"] == 2 and r["tokens"] == 2 * 16
    assert r["ratio"] == pytest.approx(r["reference_s"] / r["plain_s"], abs=0.001 * (1 + r["ratio"]) / r["plain_s"] + 1e-3)


def test_gpu_wan_realsize_tiny_smoke(tmp_path):
    _run(tmp_path, "gpu_wan_realsize.py", "--tiny")
    r = _result(tmp_path, "gpu_wan_realsize_tiny")
    assert r["device"] == "cpu" and r["tiny"] and r["latent"] == [3, 4, 8] and r["reference_passes_per_run"] == 1.0
    assert r["reference_ratio"] == round(r["results"]["reference"]["seconds"] / r["results"]["plain"]["seconds"], 3)


def test_reference_effect_smoke(tmp_path):
    _run(tmp_path, "reference_effect.py", "--frames", "2", "--steps", "2")
    r = _result(tmp_path, "reference_effect")
    assert set(r["scores"]) == {"plain", "own reference", "other identity as reference", "VAE round trip of the truth"}
    assert r["mean_abs_diff_own_vs_plain"] > 0


def test_reference_effect_with_renders_smoke(tmp_path):
    """The render options: the target guided by semantic part maps and the reference given its own skeleton and
    render (Encode Reference's pose and pose_render); they change the video."""
    _run(tmp_path, "reference_effect.py", "--frames", "2", "--steps", "2")
    plain = _result(tmp_path, "reference_effect")
    _run(tmp_path, "reference_effect.py", "--frames", "2", "--steps", "2", "--reference-pose", "--smplx-render", "semantic",
         "--reference-render")
    r = _result(tmp_path, "reference_effect")
    assert r["spec"]["smplx_render"] == "semantic" and r["spec"]["reference_render"]
    assert r["scores"]["own reference"] != plain["scores"]["own reference"]


def _epsilon_twin(tmp_path):
    """The shipped demo model's weights under ε-prediction scheduler files with ordinary betas (symlinks + two configs)."""
    src = os.path.join(REPO, "assets", "demo_models")
    dst = tmp_path / "eps_models"
    for sub in ("sd15", "motion_adapter"):
        (dst / sub).mkdir(parents=True)
        for name in os.listdir(os.path.join(src, sub)):
            if name not in ("scheduler", "scheduler_config.json"):
                os.symlink(os.path.join(src, sub, name), dst / sub / name)
    os.symlink(os.path.join(src, "pose_controller.safetensors"), dst / "pose_controller.safetensors")
    cfg = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}
    (dst / "sd15" / "scheduler").mkdir()
    (dst / "sd15" / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler", **cfg}))
    (dst / "motion_adapter" / "scheduler_config.json").write_text(json.dumps(cfg))
    return str(dst)


def test_reference_signal_refuses_models_without_zero_terminal_snr(tmp_path):
    """benchmarks/reference_signal.py decodes the first step's x0 = −v, which holds only at zero terminal SNR with
    v-prediction: an ε model is refused with that reason, not scored wrongly."""
    env = guarded_env(tmp_path / "netguard.log", BENCH_OUT=str(tmp_path), BENCH_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "reference_signal.py"), "--models",
                        _epsilon_twin(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "v-prediction model with zero terminal SNR" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "reference_signal.json").exists()


@pytest.mark.parametrize("parts", ["1", "2"])
def test_reference_learning_smoke(tmp_path, parts):
    _run(tmp_path, "reference_learning.py", "--steps", "3", "--parts", parts)
    r = _result(tmp_path, "reference_learning")
    assert r["spec"]["parts"] == int(parts)
    for objective in ("eps", "v"):
        assert r[objective]["loss_with_reference"] > 0 and r[objective]["loss_without_reference"] > 0


def test_reference_learning_zero_snr_curve_smoke(tmp_path):
    """--zero-snr (v only), --attn-lr-mult and --eval-every: the gain curve has a row per eval step."""
    _run(tmp_path, "reference_learning.py", "--steps", "3", "--parts", "2", "--objectives", "v", "--zero-snr",
         "--eval-t", "999", "--attn-lr-mult", "10", "--eval-every", "2")
    r = _result(tmp_path, "reference_learning")
    assert r["spec"]["zero_snr"] and r["spec"]["attn_lr_mult"] == 10 and "eps" not in r
    assert [row[0] for row in r["v"]["gain_curve"]] == [0, 2]
    assert r["v"]["loss_without_reference"] > 0


def test_svd_seams_reports_both_tilings_over_three_windows(tmp_path):
    _run(tmp_path, "svd_seams.py", "--frames", "13", "--window", "5", "--stride", "4", "--steps", "2", "--size", "32",
         "--seeds", "1")
    r = _result(tmp_path, "svd_seams")
    assert len(r["windows"]["plain"]) >= 3 and all(w[0] == 0 for w in r["windows"]["anchored"])
    row = r["seeds"][0]
    assert row["plain"] > 0 and row["anchored"] > 0 and row["plain_boundaries"] and row["anchored_boundaries"]
    assert r["mean_plain"] == row["plain"] and r["mean_anchored"] == row["anchored"]


def test_vae_floor_scores_the_round_trip(tmp_path):
    _run(tmp_path, "vae_floor.py", "--frames", "2", "--performers", "1")
    r = _result(tmp_path, "vae_floor")
    assert len(r["performers"]) == 1 and r["performers"][0]["seed"] >= 1_000_000
    assert 10 < r["mean_psnr"] < 60 and 0 < r["mean_part_colour"] < 1


def test_performer_rows_1_to_3_with_semantic_guidance_and_the_reference_render(tmp_path):
    """benchmarks/performer.py --rows 1-3: the baselines and rows 1-2 only, both guided by skeletons and semantic
    SMPL-X renders (row 3 would repeat row 2), the reference carrying its own skeleton and render; on the shipped
    demo model at a toy size."""
    _run(tmp_path, "performer.py", "--rows", "1-3", "--frames", "10", "--steps", "2", "--seeds", "0",
         "--reference-pose", "on", "--reference-render", "--smplx-render", "semantic", "--guidance", "skeleton+smplx")
    r = _result(tmp_path, "performer")
    assert sorted(r["mean"]) == ["1", "2", "frozen", "gt+noise"]
    for seq in ("held-out 20 %", "cross-motion"):
        one, two = r["mean"]["1"][seq], r["mean"]["2"][seq]
        assert one["psnr"] > 0 and two["part_colour"] > 0 and one != two  # the reference attention changed the video
        assert r["mean"]["frozen"][seq]["flow_epe"] > 0
    assert (r["spec"]["smplx_render"], r["spec"]["guidance"], r["spec"]["reference_render"]) == \
        ("semantic", "skeleton+smplx", True)
    assert (tmp_path / "performer_held_out.png").exists() and (tmp_path / "performer_cross_motion.png").exists()


def test_performer_follows_how_the_model_was_trained_unless_told(tmp_path):
    """benchmarks/performer.py reads the reference pose / render and the SMPL-X render kind from the model's
    train_log.json (auto), flags override it, and --rows baselines scores the two baselines without a model."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "train_log.json").write_text(json.dumps({"reference_pose": True, "reference_render": True,
                                                       "smplx_render": "semantic"}))
    for extra, want in (([], ("on", True, "semantic")),
                        (["--no-reference-render", "--smplx-render", "normal"], ("on", False, "normal")),
                        (["--reference-pose", "off"], ("off", False, "semantic"))):
        _run(tmp_path, "performer.py", "--rows", "baselines", "--frames", "10", "--seeds", "0", "--models", str(models),
             *extra)
        r = _result(tmp_path, "performer")
        assert (r["spec"]["reference_pose"], r["spec"]["reference_render"], r["spec"]["smplx_render"]) == want, extra
        assert sorted(r["mean"]) == ["frozen", "gt+noise"]
    (models / "train_log.json").write_text(json.dumps({"seed": 0}))  # a log from before the options: off, off, normal
    _run(tmp_path, "performer.py", "--rows", "baselines", "--frames", "10", "--seeds", "0", "--models", str(models))
    r = _result(tmp_path, "performer")
    assert (r["spec"]["reference_pose"], r["spec"]["reference_render"], r["spec"]["smplx_render"]) == ("off", False, "normal")
