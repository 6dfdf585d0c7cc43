"""The pack in the real ComfyUI frontend, in headless Chromium (Debian's), driven by playwright-core (npm).

tests/browser/run.mjs opens the frontend the host serves, loads every bundled workflow from the template browser,
checks the DOM, queues it with the Run button, waits for success, exercises the preview widgets and converts the
workflow to API format with the frontend's own ``graphToPrompt``.  This test checks what it recorded.  The workflows in
``workflow_tools.BROWSER_NO_RUN`` are loaded, checked and converted but not queued, each for the reason given there:
every preview kind they hold is shown by a workflow that is queued (checked below), and the test host runs their API
twins.

Needs /usr/bin/chromium and tests/browser/node_modules (scripts/setup_browser.sh, run by `make test`).  Screenshots go
to out/browser/; with PERFORMER_UPDATE_SCREENSHOTS=1 they also become docs/screenshots/*.jpg and the template
thumbnails workflows/*.jpg.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import pytest

from host import PACK_DIR_NAME, REPO
from workflow_tools import BROWSER_NO_RUN, REAL_SIZE_ONLY, preview_types

def _needs_missing_pack(path):  # a workflow with AnimateDiff-Evolved nodes, where ADE is not beside the repository
    from host import ADE_DIR

    return not os.path.isdir(ADE_DIR) and any(n["type"].startswith("ADE_") for n in json.load(open(path))["nodes"])


UI_FILES = [p for p in sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))) if not _needs_missing_pack(p)]
NAMES = [os.path.basename(p)[:-5] for p in UI_FILES]
BROWSER_DIR = os.path.join(REPO, "tests", "browser")
OUT = os.path.join(REPO, "out", "browser")
PREVIEW_NODES = preview_types()  # the node types the web extension gives a preview widget
# Requests the frontend itself makes to the Comfy registry (node-pack lookups); blocked, and allowed to be tried.
FRONTEND_HOSTS = ("https://api.comfy.org/",)


def _strip(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.fixture(scope="module")
def browser_run(host, released_files):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(chromium), "Debian chromium is missing: run scripts/setup_browser.sh (make test does)"
    assert os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")), \
        "playwright-core is missing: run scripts/setup_browser.sh (make test does)"
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cfg = {"url": host.url, "out": OUT, "pack": PACK_DIR_NAME, "chromium": chromium,
           "workflows": {n: json.load(open(p)) for n, p in zip(NAMES, UI_FILES)},
           "noRun": sorted({**REAL_SIZE_ONLY, **BROWSER_NO_RUN})}
    cfg_path = os.path.join(OUT, "config.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    proc = subprocess.run(["node", os.path.join(BROWSER_DIR, "run.mjs"), cfg_path], cwd=BROWSER_DIR,
                          capture_output=True, text=True, timeout=1500)
    res_path = os.path.join(OUT, "results.json")
    assert proc.returncode == 0, f"browser driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(res_path) as fh:
        res = json.load(fh)
    if os.environ.get("PERFORMER_UPDATE_SCREENSHOTS") == "1":
        _update_screenshots()
    return res


def _update_screenshots():
    from PIL import Image

    docs = os.path.join(REPO, "docs", "screenshots")
    os.makedirs(docs, exist_ok=True)
    for name in NAMES + ["template_browser"]:
        im = Image.open(os.path.join(OUT, f"{name}.png")).convert("RGB")
        im.resize((1200, 750), Image.LANCZOS).save(os.path.join(docs, f"{name}.jpg"), quality=80)
        if name != "template_browser":
            im.resize((512, 320), Image.LANCZOS).save(os.path.join(REPO, "workflows", f"{name}.jpg"), quality=85)


def test_extension_loads_and_thumbnails_show(browser_run):
    assert browser_run["extension"] == ["performer.core"]
    for name in NAMES:
        assert os.path.isfile(os.path.join(REPO, "workflows", f"{name}.jpg")), f"{name} has no thumbnail"
        assert browser_run["templateFiles"].get(f"{name}.jpg") == 200, (name, browser_run["templateFiles"])
        t = browser_run["thumbnails"][name]
        # the card shows our 512×320 thumbnail (the frontend's placeholder is 224×224)
        assert t and (t["w"], t["h"]) == (512, 320), (name, t)


def _shows_something(preview):
    """A preview widget the browser recorded is on screen with frames or a metrics table."""
    return preview["visible"] and (preview["frames"] > 0 or preview["metricsRows"] > 0)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_from_template_browser_runs(browser_run, name):
    r = browser_run["workflows"][name]
    ui = json.load(open(os.path.join(REPO, "workflows", f"{name}.json")))
    assert sorted((n["id"], n["type"]) for n in ui["nodes"]) == sorted((n["id"], n["type"]) for n in r["loaded"])
    for d in r["dom"]:
        assert d["rendered"] and d["title"], f"node {d['id']} ({d['type']}) not rendered with its title"
        assert not d["missingWidgets"], f"node {d['id']} ({d['type']}): widgets not in the DOM: {d['missingWidgets']}"
    if name in REAL_SIZE_ONLY or name in BROWSER_NO_RUN:  # loaded, checked and converted; run by the API tests (the reason)
        assert r["status"] == "not_run", r
        return
    assert r["status"] == "execution_success", r.get("error")
    # every node that sent a preview shows it, with frames or a metrics table
    types = {str(n["id"]): n["type"] for n in ui["nodes"]}
    want = set(r["previewed"])
    assert want == {nid for nid in r["executed"] if types.get(nid) in PREVIEW_NODES}
    shown = {p["node"]: p for p in r["previews"]}
    assert want <= set(shown), f"no preview widget on nodes {sorted(want - set(shown))}"
    for nid in want:
        p = shown[nid]
        assert _shows_something(p), (nid, types[nid], p)
    if "jointClick" in r:
        assert r["scrub"]["frame"] == r["scrub"]["last"]
        assert f"#{r['jointClick']['expected']} " in r["jointClick"]["shown"] and "confidence" in r["jointClick"]["shown"]


def test_every_preview_kind_of_the_bundled_workflows_is_shown_in_the_browser(browser_run):
    """The workflows in BROWSER_NO_RUN are loaded, checked and converted, not queued: every node type with a preview
    widget that any bundled workflow holds sent a preview, and showed it, in a workflow the browser did queue."""
    want, shown = set(), set()
    for name in NAMES:
        types = {str(n["id"]): n["type"] for n in json.load(open(os.path.join(REPO, "workflows", f"{name}.json")))["nodes"]}
        want |= {t for t in types.values() if t in PREVIEW_NODES}
        r = browser_run["workflows"][name]
        if r["status"] == "execution_success":
            visible = {p["node"] for p in r["previews"] if _shows_something(p)}
            shown |= {types[nid] for nid in r["previewed"] if nid in visible}
    assert want and want <= shown, f"preview kinds never shown in the browser: {sorted(want - shown)}"


@pytest.mark.parametrize("name", NAMES)
def test_frontend_conversion_matches_api_twin(browser_run, name):
    with open(os.path.join(REPO, "tests", "workflows", f"{name}.api.json")) as fh:
        twin = _strip(json.load(fh))
    r = browser_run["workflows"][name]
    assert _strip(r["fromFile"]) == twin
    assert _strip(r["fromTemplate"]) == twin


def test_no_pack_errors_in_console_and_nothing_leaves_the_machine(browser_run):
    def ours(text):
        return PACK_DIR_NAME in text or "performer.js" in text

    errors = [c for c in browser_run["console"] if c["type"] == "error" and (ours(c["text"]) or ours(c["url"]))]
    errors += [e for e in browser_run["pageErrors"] if ours(e["message"]) or ours(e["stack"])]
    assert not errors, errors
    assert all(u.startswith(FRONTEND_HOSTS) for u in browser_run["blocked"]), \
        [u for u in browser_run["blocked"] if not u.startswith(FRONTEND_HOSTS)]
    # the pack's own requests never leave loopback: none of the blocked ones is for the pack's files
    assert not [u for u in browser_run["blocked"] if "/extensions/" in u]
