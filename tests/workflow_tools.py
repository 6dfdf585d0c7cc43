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


def ui_to_api(ui: Dict[str, Any], object_info: Dict[str, Any]) -> Dict[str, Any]:
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        inputs: Dict[str, Any] = {}
        vals = list(node.get("widgets_values", []))
        for name, t, opts in _inputs(info):
            if _is_widget(t):
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


def api_to_ui(api: Dict[str, Any], object_info: Dict[str, Any], titles: Dict[str, str] | None = None) -> Dict[str, Any]:
    """Lay the graph out left to right by dependency depth."""
    depth: Dict[str, int] = {}

    def d(nid):
        if nid not in depth:
            srcs = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    for nid in api:
        d(nid)
    nodes, links, col_y = [], [], {}
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
                slots.append({"name": name, "type": t if isinstance(t, str) else "COMBO", "link": lid})
            elif _is_widget(t):
                widgets.append(v)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
        c = depth[nid]
        y = col_y.get(c, 40)
        col_y[c] = y + 60 + 30 * (len(widgets) + len(slots))
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [40 + 340 * c, y], "size": [300, 40 + 26 * (len(widgets) + len(slots))],
                      "flags": {}, "order": depth[nid], "mode": 0, "inputs": slots,
                      "outputs": [{"name": n, "type": t, "links": []} for n, t in zip(info["output_name"], info["output"])],
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
                      **({"title": titles[nid]} if titles and nid in titles else {})})
    for n in nodes:
        for i, o in enumerate(n["outputs"]):
            o["links"] = out_links.get((str(n["id"]), i), [])
    for l in links:
        l[5] = l[5] if isinstance(l[5], str) else "COMBO"
    return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0, "last_node_id": max(int(k) for k in api),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
