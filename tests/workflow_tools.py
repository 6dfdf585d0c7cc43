"""UI-format <-> API-format workflow conversion from ComfyUI's /object_info.

The frontend's ``graphToPrompt`` is the real converter (the browser test uses it); this Python
version lets the CPU test suite check that each bundled UI workflow and its API twin stay in
sync (same nodes, same links, same widget values) and lets ``scripts/api_to_ui.py`` lay out
new workflows."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(info: Dict[str, Any]) -> List[Tuple[str, Any, dict]]:
    out = []
    for section in ("required", "optional"):
        spec = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(spec)):
            t = spec[name]
            out.append((name, t[0], t[1] if len(t) > 1 else {}))
    return out


def _is_widget(t) -> bool:
    return isinstance(t, list) or t in WIDGET_TYPES


VIRTUAL_NODES = {"Note", "MarkdownNote"}  # frontend-only: never part of the API prompt
PREVIEW_HEIGHT = 270  # the web extension's preview widget under a node


def preview_types() -> set:
    """The node types the web extension gives a preview widget (PREVIEW_TYPES in web/js/performer.js)."""
    import os
    import re

    js = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "js", "performer.js")).read()
    return set(re.findall(r'"(Performer\w+)"', re.search(r"PREVIEW_TYPES = new Set\(\[(.*?)\]\)", js, re.S).group(1)))


def ui_to_api(ui: Dict[str, Any], object_info: Dict[str, Any]) -> Dict[str, Any]:
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
            continue
        info = object_info[node["type"]]
        inputs: Dict[str, Any] = {}
        vals = list(node.get("widgets_values", []))
        for name, t, opts in _inputs(info):
            if _is_widget(t):  # (a widget fed by a link keeps a value here too; the link below replaces it)
                if not vals:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value for '{name}'")
                inputs[name] = vals.pop(0)
                if opts.get("control_after_generate"):
                    vals.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                l = links[slot["link"]]
                inputs[slot["name"]] = [str(l[1]), l[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def api_to_ui(api: Dict[str, Any], object_info: Dict[str, Any], titles: Dict[str, str] | None = None,
              note: str | None = None) -> Dict[str, Any]:
    """Lay the graph out left to right by dependency depth, one titled group per column (named after the stages of
    its nodes' categories), with an optional Note node above (frontend-only, not part of the API prompt)."""
    depth: Dict[str, int] = {}

    def d(nid):
        if nid not in depth:
            srcs = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    for nid in api:
        d(nid)
    nodes, links, col_y = [], [], {}
    previews = preview_types()
    out_links: Dict[Tuple[str, int], List[int]] = {}
    for nid in sorted(api, key=int):
        node = api[nid]
        info = object_info[node["class_type"]]
        slots, widgets = [], []
        for name, t, opts in _inputs(info):
            v = node["inputs"].get(name)
            if isinstance(v, list):
                lid = len(links) + 1
                links.append([lid, int(v[0]), v[1], int(nid), len(slots), info["input"].get("required", {}).get(name, info["input"].get("optional", {}).get(name))[0] if not _is_widget(t) else t])
                out_links.setdefault((v[0], v[1]), []).append(lid)
                slot = {"name": name, "type": t if isinstance(t, str) else "COMBO", "link": lid}
                if _is_widget(t):  # a widget fed by a link: the frontend keeps the widget (and a value for it)
                    slot["widget"] = {"name": name}
                    widgets.append(opts.get("default", t[0] if isinstance(t, list) and t else None))
                    if opts.get("control_after_generate"):
                        widgets.append("fixed")
                slots.append(slot)
            elif _is_widget(t):
                widgets.append(v)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
        c = depth[nid]
        y = col_y.get(c, 300 if note else 80)
        extra = PREVIEW_HEIGHT if node["class_type"] in previews or node["class_type"] == "LoadImage" else 0
        col_y[c] = y + 60 + 30 * (len(widgets) + len(slots)) + extra
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [40 + 340 * c, y],
                      "size": [300, 40 + 26 * (len(widgets) + len(slots)) + extra],
                      "flags": {}, "order": depth[nid], "mode": 0, "inputs": slots,
                      "outputs": [{"name": n, "type": t, "links": []} for n, t in zip(info["output_name"], info["output"])],
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
                      **({"title": titles[nid]} if titles and nid in titles else {})})
    for n in nodes:
        for i, o in enumerate(n["outputs"]):
            o["links"] = out_links.get((str(n["id"]), i), [])
    for l in links:
        l[5] = l[5] if isinstance(l[5], str) else "COMBO"
    groups = []
    stage = {"io": "load models", "reference": "reference", "pose": "pose", "body": "body", "sampling": "sample",
             "personalise": "personalise", "refine": "refine", "evaluate": "evaluate"}
    for c in sorted(set(depth.values())):
        members = [n for n in nodes if depth[str(n["id"])] == c]
        cats = []
        for n in members:
            cat = object_info[n["type"]].get("category", "")
            last = cat.split("/")[-1] if cat.startswith("Performer") else ("inputs" if "Load" in n["type"] else "outputs")
            name = stage.get(last, last)
            if name not in cats:
                cats.append(name)
        x0 = min(n["pos"][0] for n in members) - 10
        y0 = min(n["pos"][1] for n in members) - 40
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + 20
        groups.append({"id": len(groups) + 1, "title": f"{c + 1} · " + ", ".join(cats), "bounding": [x0, y0, 320, y1 - y0],
                       "color": "#3f789e", "font_size": 20, "flags": {}})
    if note:
        nodes.append({"id": max(int(k) for k in api) + 1, "type": "Note", "pos": [40, 20], "size": [660, 220], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [note], "color": "#432", "bgcolor": "#653"})
    return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0, "last_node_id": max(n["id"] for n in nodes),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


# ----------------------------------------------------------------------------- workflows that need real-size files
# Bundled workflows that name a model core builds only at its one real size, too large for the test machines.  The
# test host runs them with those nodes replaced (``for_test_host``); the browser test loads them, checks them and
# converts them, but does not queue them (it runs the files as bundled).
REAL_SIZE_ONLY = {
    "performer_native_wan_animate_reference": (
        "umt5-xxl (5.7 B parameters) and CLIP vision H are built by core at their one real size; the test host runs "
        "this workflow with TestWanTextEmbedding for the text encoder and without the optional CLIP-vision input "
        "(tests/test_host.py, tests/test_native_wan.py)"),
}


_NO_PACK_PREVIEW = (
    "it has no preview node of the pack (core nodes save its frames); what the Run button would queue is the "
    "frontend's own conversion, which test_frontend_conversion_matches_api_twin checks equal to the API twin, and the "
    "test host runs that twin (tests/test_host.py)")

# Workflows the browser test loads, checks and converts but does not queue, with the reason; the API tests run them.
BROWSER_NO_RUN = {
    "performer_native_mimicmotion": (
        "its SVD-xt UNet carries 1.5 B MimicMotion weight patches at its one real size and it has no preview node; the "
        "test host runs it through the API (tests/test_host.py, tests/test_released_mimicmotion_unet.py)"),
    "performer_native_ade_reference": _NO_PACK_PREVIEW,
    "performer_native_sd15_reference": _NO_PACK_PREVIEW,
    "performer_native_svd_reference_pose": _NO_PACK_PREVIEW,
    # every kind of preview these show is shown by a workflow the browser runs
    # (tests/test_browser.py::test_every_preview_kind_of_the_bundled_workflows_is_shown_in_the_browser); the test host
    # runs their API twins, which is what their Run button would queue
    "performer_animatediff_reference_controlnet": "its one preview kind (Animate) is shown by performer_demo_synthetic",
    "performer_svd_posecontroller_identity": "its one preview kind (Animate) is shown by performer_demo_synthetic",
    "performer_body_from_poses": "its preview kinds (Load Pose, Render Body) are shown by performer_demo_synthetic and "
                                 "performer_ivr_refine",
    "performer_pose_retarget": "its preview kinds (Load Pose, Clean Pose, Draw Pose, Retarget Pose) are shown by "
                               "performer_pose_extract_retarget and performer_ivr_refine",
}


def for_test_host(name: str, api: Dict[str, Any]) -> Dict[str, Any]:
    """``api`` as the test host runs it.  For the Wan workflow: CLIPLoader + CLIPTextEncode become the test-only
    ``TestWanTextEmbedding`` (seeded (1, tokens, 4096) CONDITIONING, the shape umt5-xxl gives), and CLIPVisionLoader +
    CLIPVisionEncode are removed with the optional ``clip_vision_output`` they fed.  Everything else runs as bundled, on
    tiny files under the names the workflow gives.  Other workflows are returned unchanged."""
    if name not in REAL_SIZE_ONLY:
        return api
    api = {k: {**v, "inputs": dict(v["inputs"])} for k, v in api.items()}
    seeds = iter(range(1, 100))
    for k in [k for k, v in api.items() if v["class_type"] in ("CLIPLoader", "CLIPVisionLoader", "CLIPVisionEncode")]:
        api.pop(k)
    for v in api.values():
        if v["class_type"] == "CLIPTextEncode":
            v["class_type"], v["inputs"] = "TestWanTextEmbedding", {"seed": next(seeds), "tokens": 8}
        v["inputs"].pop("clip_vision_output", None)
    assert not any(isinstance(x, list) and x[0] not in api for v in api.values() for x in v["inputs"].values()), \
        "a node still reads a removed one"
    return api
