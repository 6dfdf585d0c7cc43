"""Write the UI-format twin of an API-format workflow, with its note (scripts/workflow_notes.py) and groups.

    python scripts/api_to_ui.py API.json OUT.json OBJECT_INFO.json
    python scripts/api_to_ui.py --all OBJECT_INFO.json     # every tests/workflows/<name>.api.json with a workflows/<name>.json
"""
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)
from workflow_notes import NOTES  # noqa: E402
from workflow_tools import api_to_ui  # noqa: E402


def convert(api_path, out_path, info):
    api = json.load(open(api_path))
    titles = {k: v.get("_meta", {}).get("title") for k, v in api.items() if v.get("_meta", {}).get("title")}
    name = os.path.basename(out_path)[:-5]
    with open(out_path, "w") as fh:
        json.dump(api_to_ui(api, info, titles, note=NOTES.get(name)), fh, indent=1)


if sys.argv[1] == "--all":
    info = json.load(open(sys.argv[2]))
    for ui in sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))):
        name = os.path.basename(ui)[:-5]
        convert(os.path.join(REPO, "tests", "workflows", name + ".api.json"), ui, info)
        print("wrote", ui)
else:
    convert(sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])))
