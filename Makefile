# The two commands of the README. Both build (or reuse) .venv/ and .host/ComfyUI first.
.PHONY: setup setup-browser test test-browser demo clean
PY := .venv/bin/python

setup:
	bash scripts/setup_env.sh

setup-browser:
	bash scripts/setup_browser.sh

test: setup setup-browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# only the browser test (it is also part of `make test`)
test-browser: setup setup-browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_browser.py

demo: setup
	OMP_NUM_THREADS=1 $(PY) scripts/demo.py

clean:
	rm -rf .venv .host out tests/browser/node_modules
