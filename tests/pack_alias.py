"""Import the repository as the package ``performer_pkg`` (outside ComfyUI).

Inside ComfyUI the pack is imported under its folder name; outside it (tests, the demo's
model builder, benchmarks) we give it this fixed name so relative imports work and nothing
collides with ComfyUI's own top-level ``nodes`` / ``models`` modules."""
from __future__ import annotations

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "performer_pkg"


def register_package():
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, os.path.join(REPO, "__init__.py"), submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = mod
    spec.loader.exec_module(mod)
    return mod
