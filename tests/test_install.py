"""The install a user does: README commands (which CI's newcomer job runs), dependency bounds, the MediaPipe recipe,
the supported ComfyUI range."""
import os
import re
import sys
import tomllib

from host import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import readme_install  # noqa: E402


def _read(*p):
    with open(os.path.join(REPO, *p), encoding="utf-8") as fh:
        return fh.read()


def test_newcomer_job_runs_the_readme_commands():
    cmds = readme_install.install_commands(_read("README.md"))
    assert cmds[0] == "cd ComfyUI/custom_nodes"
    assert cmds[1] == f"git clone {readme_install.PLACEHOLDER} ComfyUI-Performer"
    assert "pip install -r ComfyUI-Performer/requirements.txt" in cmds
    job = _read("scripts", "newcomer_install.sh")
    # the job takes its install commands from the README (through readme_install.py) and has none of its own
    assert "scripts/readme_install.py" in job and 'bash -euo pipefail -c "$script"' in job
    assert "requirements.txt" not in job.replace("requirements-comfy.txt", "").replace('"$NEW/ComfyUI/requirements.txt"', "")
    assert "bash scripts/newcomer_install.sh" in _read(".ci", "run")
    # a changed README changes what the job runs
    text = _read("README.md").replace("pip install -r ComfyUI-Performer/requirements.txt", "pip install -r ComfyUI-Performer/other.txt")
    assert "pip install -r ComfyUI-Performer/other.txt" in readme_install.install_commands(text)


def test_mediapipe_recipe_is_the_same_everywhere():
    from performer_pkg.models.pose.extract import MEDIAPIPE_RECIPE

    assert "matplotlib" in MEDIAPIPE_RECIPE
    assert MEDIAPIPE_RECIPE in readme_install.install_commands(_read("README.md"))
    assert MEDIAPIPE_RECIPE in _read("requirements.txt")
    assert "{MEDIAPIPE_RECIPE}" in _read("models", "pose", "extract.py")  # the error message quotes it


def test_opencv_bound_keeps_pip_away_from_opencv5():
    req = [ln.split("#")[0].strip() for ln in _read("requirements.txt").splitlines()]
    deps = tomllib.loads(_read("pyproject.toml"))["project"]["dependencies"]
    for spec in (next(r for r in req if r.startswith("opencv")), next(d for d in deps if d.startswith("opencv"))):
        assert re.fullmatch(r"opencv-python-headless>=4\.9,<5", spec), spec
    import cv2

    assert int(cv2.__version__.split(".")[0]) < 5 and hasattr(cv2, "CascadeClassifier")


def test_supported_comfyui_range_is_declared_and_enforced():
    import performer_pkg as pack

    need = ".".join(map(str, pack.MIN_COMFYUI))
    assert tomllib.loads(_read("pyproject.toml"))["tool"]["comfy"]["requires-comfyui"] == f">={need}"
    assert f"ComfyUI {need}" in _read("README.md")
    assert pack.unsupported_reason(pack.MIN_COMFYUI) is None and pack.unsupported_reason((0, 4, 0)) is None
    msg = pack.unsupported_reason((0, 3, 51))
    assert msg and need in msg and "0.3.51" in msg and "\n" not in msg
