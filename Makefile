# The two commands of the README. Both build (or reuse) .venv/ and .host/ComfyUI first.
.PHONY: setup test demo clean
PY := .venv/bin/python

setup:
	bash scripts/setup_env.sh

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

demo: setup
	OMP_NUM_THREADS=1 $(PY) scripts/demo.py

clean:
	rm -rf .venv .host out
