"""Write the UI-format twin of an API-format workflow: python scripts/api_to_ui.py API.json OUT.json OBJECT_INFO.json"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from workflow_tools import api_to_ui  # noqa: E402

api = json.load(open(sys.argv[1]))
info = json.load(open(sys.argv[3]))
titles = {k: v.get("_meta", {}).get("title") for k, v in api.items() if v.get("_meta", {}).get("title")}
json.dump(api_to_ui(api, info, titles), open(sys.argv[2], "w"), indent=1)
