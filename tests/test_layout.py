"""The library layout: every module in models/ imports without ComfyUI, and models/ has no import cycle (imports
inside functions count: they hide a cycle, they do not remove it)."""
import ast
import glob
import os
import subprocess
import sys

from host import REPO

MODELS = os.path.join(REPO, "models")


def _modules():
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(MODELS, "*.py"))
                  if not p.endswith("__init__.py"))


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


def _edges():
    names = set(_modules())
    edges = {}
    for name in names:
        with open(os.path.join(MODELS, name + ".py"), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        edges[name] = deps & names
    return edges


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
