"""The library layout: models/ is grouped into stage subpackages (plus the shared common/errors modules), every module
imports without ComfyUI, and models/ has no import cycle (imports inside functions count: they hide a cycle, they do
not remove it)."""
import ast
import glob
import os
import subprocess
import sys

from host import REPO

MODELS = os.path.join(REPO, "models")


STAGES = ("attention", "backbones", "body", "evaluate", "guidance", "pose", "posecrafter", "refine", "sampling")


def _modules():
    """Dotted names below models/, e.g. ``sampling.sampler``; the packages' own ``__init__`` included."""
    out = []
    for p in glob.glob(os.path.join(MODELS, "**", "*.py"), recursive=True):
        rel = os.path.relpath(p, MODELS)[:-3].replace(os.sep, ".")
        if rel != "__init__":
            out.append(rel[: -len(".__init__")] if rel.endswith(".__init__") else rel)
    return sorted(out)


def test_models_is_grouped_by_stage():
    top = sorted(os.path.basename(p) for p in glob.glob(os.path.join(MODELS, "*.py")))
    assert top == ["__init__.py", "common.py", "errors.py"], top  # everything else lives in a stage package
    pkgs = sorted(d for d in os.listdir(MODELS) if os.path.isfile(os.path.join(MODELS, d, "__init__.py")))
    assert tuple(pkgs) == STAGES, pkgs


def test_every_models_module_imports_without_comfyui():
    code = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"):
            raise ImportError("ComfyUI import from models/: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import pack_alias
pack_alias.register_package()
for m in {_modules()!r}:
    importlib.import_module("performer_pkg.models." + m)
print("ok", len({_modules()!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-3000:]


def _resolve(name: str, node: ast.ImportFrom):
    """The models/ modules an ``ImportFrom`` in module ``name`` pulls in (relative imports only)."""
    pkg = name.split(".")[:-1] if not os.path.isfile(os.path.join(MODELS, *name.split("."), "__init__.py")) else name.split(".")
    base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    if node.level - 1 > len(pkg):
        return set()  # above models/ (e.g. the pack root)
    mod = base + (node.module.split(".") if node.module else [])
    if node.module:
        return {".".join(mod)}
    return {".".join(mod + [a.name]) for a in node.names} | {".".join(mod)}


def _edges():
    names = set(_modules())
    edges = {}
    for name in names:
        path = os.path.join(MODELS, *name.split("."))
        path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                deps |= _resolve(name, node)
        edges[name] = (deps & names) - {name}
    return edges


def test_the_import_walker_sees_cross_package_imports():
    e = _edges()
    assert "errors" in e["sampling.sampler"] and "attention.maths" in e["attention.reference"]
    assert any(d.startswith("backbones.") for d in e["posecrafter.personalise"])


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_no_import_cycle_in_models():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the walker finds one
    assert find_cycle(_edges()) is None, " -> ".join(find_cycle(_edges()))
