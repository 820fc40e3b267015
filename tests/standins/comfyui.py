"""A stand-in ComfyUI: a real process with ComfyUI 0.3.64's command line, log lines, HTTP API and exit behaviour.

Run it like ComfyUI:

    python tests/standins/comfyui.py --listen 127.0.0.1 --port 8188 [flags of ComfyUI 0.3.64]
    python -m tests.standins.comfyui --help          # argparse help listing every 0.3.64 flag, exit 0
    python -m tests.standins.comfyui --medvram       # "main.py: error: unrecognized arguments: --medvram", exit 2

A COMFYUI_DIR for tests is a folder whose `main.py` runs this module (see `write_main`), so the supervisor's real
launch path `python main.py --listen ... --port ...` is exercised.

Command line: the flags of ComfyUI 0.3.64 (Comfy-Org/ComfyUI a125cd84 comfy/cli_args.py; names and arities only),
parsed by argparse like the real one: unknown flags and bad values exit 2; `--user-directory` must exist.

Log lines (stderr, like ComfyUI; `--log-stdout` moves them to stdout): `Total VRAM ...`, `Set vram state to: ...`,
`Device: ...`, `Starting server`, then `To see the GUI go to: http://ADDR:PORT` after the socket is bound (not with
`--dont-print-server`). Per prompt: `got prompt`, `Prompt executed in N seconds`.

HTTP (each also under /api): GET /system_stats, /object_info[/{class}], /prompt, /queue, /history[/{id}],
/features, /models, /view; POST /prompt (200 {prompt_id, number, node_errors: {}}; 400 no_prompt /
prompt_no_outputs / invalid_prompt for unknown class_type, and with mode `validate` prompt_outputs_failed_validation
with node_errors; 500 for malformed JSON), /queue ({"clear": true} / {"delete": [...]}), /history ({"clear": true}),
/interrupt (global, or {"prompt_id"} only if that prompt runs), /free, /upload/image. Prompts run one at a time in a
worker thread for STANDIN_PROMPT_SECONDS (default 0.05) and land in /history as success with their outputs (or,
with mode prompt_oom, as the torch.OutOfMemoryError that ComfyUI catches, with its real log lines; the process stays
up). GET /history honours ?max_items=N. GET /manager/reboot reboots like ComfyUI-Manager (see reboot_after); POST
/standin/crash (test-only) prints a non-OOM traceback and exits 1. Uploads, outputs, /view and validation:
tests/standins/comfyui_files.py.

Signals: none handled, like ComfyUI: SIGTERM kills it at once (-15); SIGINT after start stops it gracefully
(`Stopped server`, exit 0).

Environment:
  STANDIN_MODE         comma list of modes, applied at every start
  STANDIN_MODE_<DEV>   more modes for the one started with CUDA_VISIBLE_DEVICES=DEV ("-" written "_")
  STANDIN_MODE_FILE    file with one line of modes per start (line i for the i-th start, the last line repeats;
                       the start count is kept in FILE.count); combined with STANDIN_MODE
  STANDIN_RECORD       JSON-lines file: one "start" record (pid, pgid, sid, ppid, argv, cwd, environment names,
                       SigBlk/SigIgn/SigCgt) and events: listening (t = time.time() after bind), prompt_done,
                       signal, orphan, escapee_pid, exiting (t, code)
  STANDIN_OBJECT_INFO  JSON file served as /object_info (default tests/data/run/object_info.json)
  STANDIN_PROMPT_SECONDS  seconds each prompt runs (default 0.05)

Modes (ARG in seconds unless said otherwise):
  slow_start:S         sleep S before binding            crash_at_start[:CODE]  traceback, exit CODE (1) before binding
  exit2                argparse error for a bad value     oom_at_start          CUDA OOM traceback, exit 1, no bind
  oom_after:S          CUDA OOM traceback, exit 1, S after binding
  crash_after:S[:CODE] exit CODE (1) S after binding
  kill_self_after:S:SIG  kill itself with signal SIG (name or number) S after binding
  hang_after:S         S after binding, stop answering HTTP (requests block)
  ignore_sigterm       SIGTERM ignored                    term_exit:CODE        on SIGTERM, exit CODE
  trap_signals         HUP/USR1/USR2 recorded instead of killing it
  group_child          a child in its process group records the signals it gets (TERM/HUP/USR1/USR2/INT)
  orphans:N            N grandchildren orphaned at start; each exits 0.2 s later (a zombie unless someone reaps)
  escapee              a grandchild in its own session (setsid) that lives 60 s and records SIGTERM
  no_driver            "Found no NVIDIA driver" traceback, exit 1, before binding
  reboot_after:S       ComfyUI-Manager reboot: with __COMFY_CLI_SESSION__ touch SESSION.reboot and exit 0,
                       else os.execv itself (same pid)
  no_ready_line        do not print the ready line (like --dont-print-server)
  prompt_oom           prompts fail with torch.OutOfMemoryError (logged with "Got an OOM"); the process stays up
  prompt_seconds:S     each prompt runs S                 sigint_delay:S        SIGINT: wait S before "Stopped server"
  validate             POST /prompt checks required inputs, INT/FLOAT ranges and input files (400 with node_errors)
  progress             print a carriage-return progress bar while starting
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "run"
VERSION = "0.3.64"
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.standins import comfyui_files as files  # noqa: E402

# (flag, kind, extra): store_true | value (type) | optional (const) | plus | star (choices) | choice (choices)
_GROUPS: list[list[tuple[str, str, Any]]] = [
    [("--listen", "optional", "0.0.0.0,::"), ("--port", "value", int), ("--tls-keyfile", "value", str),
     ("--tls-certfile", "value", str), ("--enable-cors-header", "optional", "*"),
     ("--max-upload-size", "value", float), ("--base-directory", "value", str),
     ("--extra-model-paths-config", "plus_append", str), ("--output-directory", "value", str),
     ("--temp-directory", "value", str), ("--input-directory", "value", str), ("--auto-launch", "flag", None),
     ("--disable-auto-launch", "flag", None), ("--cuda-device", "value", int), ("--default-device", "value", int)],
    [("--cuda-malloc", "xflag", None), ("--disable-cuda-malloc", "xflag", None)],
    [("--force-fp32", "xflag", None), ("--force-fp16", "xflag", None)],
    [(f, "xflag", None) for f in ("--fp32-unet", "--fp64-unet", "--bf16-unet", "--fp16-unet", "--fp8_e4m3fn-unet",
                                  "--fp8_e5m2-unet", "--fp8_e8m0fnu-unet")],
    [(f, "xflag", None) for f in ("--fp16-vae", "--fp32-vae", "--bf16-vae")],
    [("--cpu-vae", "flag", None)],
    [(f, "xflag", None) for f in ("--fp8_e4m3fn-text-enc", "--fp8_e5m2-text-enc", "--fp16-text-enc",
                                  "--fp32-text-enc", "--bf16-text-enc")],
    [("--force-channels-last", "flag", None), ("--directml", "optional_int", -1),
     ("--oneapi-device-selector", "value", str), ("--disable-ipex-optimize", "flag", None),
     ("--supports-fp8-compute", "flag", None), ("--preview-method", "choice", ("none", "auto", "latent2rgb", "taesd")),
     ("--preview-size", "value", int)],
    [("--cache-classic", "xflag", None), ("--cache-lru", "xvalue", int), ("--cache-none", "xflag", None)],
    [(f, "xflag", None) for f in ("--use-split-cross-attention", "--use-quad-cross-attention",
                                  "--use-pytorch-cross-attention", "--use-sage-attention", "--use-flash-attention")],
    [("--disable-xformers", "flag", None)],
    [("--force-upcast-attention", "xflag", None), ("--dont-upcast-attention", "xflag", None)],
    [(f, "xflag", None) for f in ("--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu")],
    [("--reserve-vram", "value", float), ("--async-offload", "flag", None), ("--force-non-blocking", "flag", None),
     ("--default-hashing-function", "choice", ("md5", "sha1", "sha256", "sha512")),
     ("--disable-smart-memory", "flag", None), ("--deterministic", "flag", None),
     ("--fast", "star", ("fp16_accumulation", "fp8_matrix_mult", "cublas_ops", "autotune")),
     ("--mmap-torch-files", "flag", None), ("--disable-mmap", "flag", None), ("--dont-print-server", "flag", None),
     ("--quick-test-for-ci", "flag", None), ("--windows-standalone-build", "flag", None),
     ("--disable-metadata", "flag", None), ("--disable-all-custom-nodes", "flag", None),
     ("--whitelist-custom-nodes", "plus", str), ("--disable-api-nodes", "flag", None),
     ("--multi-user", "flag", None), ("--verbose", "verbose", None), ("--log-stdout", "flag", None),
     ("--front-end-version", "value", str), ("--front-end-root", "directory", None),
     ("--user-directory", "directory", None), ("--enable-compress-response-body", "flag", None),
     ("--comfy-api-base", "value", str), ("--database-url", "value", str)],
]
FLAGS = [flag for group in _GROUPS for flag, _, _ in group]


def _directory(path: str) -> str:
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"The path '{path}' does not exist.")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"'{path}' is not a directory.")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=os.path.basename(sys.argv[0]) or "main.py")
    for group in _GROUPS:
        exclusive = any(kind.startswith("x") for _, kind, _ in group)
        target = parser.add_mutually_exclusive_group() if exclusive else parser
        for flag, kind, extra in group:
            if kind in ("flag", "xflag"):
                target.add_argument(flag, action="store_true")
            elif kind in ("value", "xvalue"):
                target.add_argument(flag, type=extra)
            elif kind == "optional":
                target.add_argument(flag, nargs="?", const=extra, default="127.0.0.1" if flag == "--listen" else None)
            elif kind == "optional_int":
                target.add_argument(flag, type=int, nargs="?", const=extra)
            elif kind == "plus_append":
                target.add_argument(flag, nargs="+", action="append")
            elif kind == "plus":
                target.add_argument(flag, nargs="+", default=[])
            elif kind == "star":
                target.add_argument(flag, nargs="*", choices=extra)
            elif kind == "choice":
                target.add_argument(flag, choices=extra)
            elif kind == "verbose":
                target.add_argument(flag, default="INFO", const="DEBUG", nargs="?",
                                    choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
            elif kind == "directory":
                target.add_argument(flag, type=_directory)
    return parser


def write_main(comfyui_dir: Path) -> Path:
    """Make `comfyui_dir` a COMFYUI_DIR whose main.py runs this stand-in."""
    comfyui_dir.mkdir(parents=True, exist_ok=True)
    main = comfyui_dir / "main.py"
    main.write_text("import sys\n"
                    f"sys.path.insert(0, {str(REPO)!r})\n"
                    "from tests.standins.comfyui import main\n"
                    "sys.exit(main())\n")
    (comfyui_dir / "custom_nodes").mkdir(exist_ok=True)
    return main


# ---------------------------------------------------------------------------------------------------------------


class Modes:
    def __init__(self, spec: str):
        self.values: dict[str, list[str]] = {}
        for part in spec.split(","):
            part = part.strip()
            if part:
                name, *args = part.split(":")
                self.values[name] = args

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def arg(self, name: str, index: int = 0, default: str | None = None) -> str | None:
        args = self.values.get(name, [])
        return args[index] if len(args) > index and args[index] != "" else default

    def number(self, name: str, index: int = 0, default: float = 0.0) -> float:
        value = self.arg(name, index)
        return float(value) if value is not None else default


def read_modes() -> Modes:
    spec = os.environ.get("STANDIN_MODE", "")
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device:  # one ComfyUI per GPU: STANDIN_MODE_<device> applies to the one started on that device only
        spec += "," + os.environ.get(f"STANDIN_MODE_{device.replace('-', '_')}", "")
    mode_file = os.environ.get("STANDIN_MODE_FILE")
    if mode_file:
        counter = Path(mode_file + ".count")
        try:
            count = int(counter.read_text())
        except (OSError, ValueError):
            count = 0
        counter.write_text(str(count + 1))
        lines = Path(mode_file).read_text().splitlines() or [""]
        spec += "," + lines[min(count, len(lines) - 1)]
    return Modes(spec)


_record_lock = threading.Lock()


def record(event: str, **data: Any) -> None:
    path = os.environ.get("STANDIN_RECORD")
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **data})
    with _record_lock, open(path, "a") as f:
        f.write(line + "\n")


def proc_status() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("SigBlk", "SigIgn", "SigCgt", "PPid"):
                fields[key] = value.strip()
    except OSError:
        pass
    return fields


class Log:
    def __init__(self, stdout: bool):
        self.stream = sys.stdout if stdout else sys.stderr

    def __call__(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def die(log: Log, lines: list[str], code: int) -> None:
    for line in lines:
        log(line)
    record("exiting", code=code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


OOM_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "<comfyui>/main.py", line 380, in <module>',
    '  File "<comfyui>/comfy/model_management.py", line 620, in load_models_gpu',
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of 79.18 GiB "
    "of which 6.66 GiB is free. Including non-PyTorch memory, this process has 72.51 GiB memory in use. Of the "
    "allocated memory 72.00 GiB is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated.",
]
PROMPT_OOM_TEXT = ("CUDA out of memory. Tried to allocate 11.25 GiB. GPU 0 has a total capacity of 23.53 GiB of which "
                   "2.81 GiB is free. Including non-PyTorch memory, this process has 20.71 GiB memory in use.")
PROMPT_OOM_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "<comfyui>/execution.py", line 496, in execute',
    '  File "<comfyui>/custom_nodes/ComfyUI-WanVideoWrapper/nodes_sampler.py", line 2301, in process',
    f"torch.OutOfMemoryError: {PROMPT_OOM_TEXT}",
]
CRASH_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "<comfyui>/main.py", line 380, in <module>',
    "RuntimeError: stand-in crash on request",
]
DRIVER_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "<comfyui>/comfy/model_management.py", line 233, in <module>',
    "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a "
    "driver from http://www.nvidia.com/Download/index.aspx",
]


# ---------------------------------------------------------------------------------------------------------------


class State:
    def __init__(self, args: argparse.Namespace, modes: Modes, log: Log):
        self.args, self.modes, self.log = args, modes, log
        self.lock = threading.Condition()
        self.number = 0
        self.pending: list[list[Any]] = []
        self.running: list[Any] | None = None
        self.history: dict[str, Any] = {}
        self.hung = threading.Event()
        self.interrupted = False
        info_path = Path(os.environ.get("STANDIN_OBJECT_INFO") or DATA / "object_info.json")
        self.object_info = json.loads(info_path.read_text())
        self.prompt_seconds = modes.number("prompt_seconds", default=float(
            os.environ.get("STANDIN_PROMPT_SECONDS", "0.05")))
        stats = json.loads((DATA / "system_stats.json").read_text())
        stats["system"]["argv"] = ["main.py", *sys.argv[1:]]
        stats["system"]["comfyui_version"] = VERSION
        self.system_stats = stats
        self.dirs = files.Dirs.from_args(args)

    def queue_json(self) -> dict[str, Any]:
        with self.lock:
            return {"queue_running": [self.running] if self.running else [], "queue_pending": list(self.pending)}

    def enqueue(self, prompt: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            prompt_id = str(uuid.uuid4())
            number = self.number
            self.number += 1
            outputs = [k for k, v in prompt.items() if files.is_output_node(v.get("class_type", ""), self.object_info)]
            self.pending.append([number, prompt_id, prompt, extra, outputs])
            self.lock.notify_all()
            return {"prompt_id": prompt_id, "number": number, "node_errors": {}}

    def worker(self) -> None:
        while True:
            with self.lock:
                while not self.pending:
                    self.lock.wait()
                item = self.pending.pop(0)
                self.running = item
                self.interrupted = False
            self.log("got prompt")
            started = time.monotonic()
            deadline = started + self.prompt_seconds
            while time.monotonic() < deadline and not self.interrupted:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            prompt_id = item[1]
            outputs: dict[str, Any] = {}
            if self.interrupted:
                self.log("Processing interrupted")
                status = {"status_str": "error", "completed": False,
                          "messages": [["execution_interrupted", {"prompt_id": prompt_id, "node_id": "1",
                                                                  "node_type": "EmptyImage", "executed": []}]]}
            elif "prompt_oom" in self.modes:
                node_id, node = next(iter(item[2].items()))
                # What ComfyUI 0.3.64's execution.py logs when it catches torch's error inside a prompt.
                self.log(f"!!! Exception during processing !!! {PROMPT_OOM_TEXT}")
                for line in PROMPT_OOM_TRACEBACK:
                    self.log(line)
                self.log("Got an OOM, unloading all loaded models.")
                status = {"status_str": "error", "completed": False, "messages": [
                    ["execution_start", {"prompt_id": prompt_id}],
                    ["execution_error", {
                        "prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"], "executed": [],
                        "exception_message": f"{PROMPT_OOM_TEXT}\nThis error means you ran out of memory on your GPU."
                                             "\n\nTIPS: If the workflow worked before you might have accidentally "
                                             "set the batch_size to a large number.",
                        "exception_type": "torch.OutOfMemoryError", "traceback": PROMPT_OOM_TRACEBACK[1:-1],
                        "current_inputs": {}, "current_outputs": []}]]}
            else:
                outputs = files.write_outputs(item[2], prompt_id, self.dirs, self.object_info)
                status = {"status_str": "success", "completed": True,
                          "messages": [["execution_start", {"prompt_id": prompt_id}],
                                       ["execution_success", {"prompt_id": prompt_id}]]}
            with self.lock:
                self.history[prompt_id] = {"prompt": item, "outputs": outputs, "status": status, "meta": {}}
                self.running = None
            self.log(f"Prompt executed in {time.monotonic() - started:.2f} seconds")
            record("prompt_done", prompt_id=prompt_id, ok=status["status_str"] == "success")


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _path(self) -> str:
            path = self.path.split("?", 1)[0]
            return path[4:] if path.startswith("/api/") else path

        def _json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _text(self, code: int, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"")

        def _hang(self) -> None:
            if state.hung.is_set():
                time.sleep(3600)

        def do_GET(self) -> None:  # noqa: N802
            self._hang()
            path = self._path()
            if path == "/system_stats":
                self._json(200, state.system_stats)
            elif path == "/object_info":
                self._json(200, state.object_info)
            elif path.startswith("/object_info/"):
                name = path.split("/", 2)[2]
                self._json(200, {name: state.object_info[name]} if name in state.object_info else {})
            elif path == "/prompt":
                queue = state.queue_json()
                self._json(200, {"exec_info": {"queue_remaining": len(queue["queue_running"])
                                               + len(queue["queue_pending"])}})
            elif path == "/queue":
                self._json(200, state.queue_json())
            elif path == "/history":
                with state.lock:
                    items = list(state.history.items())
                query = dict(part.split("=", 1) for part in self.path.partition("?")[2].split("&") if "=" in part)
                if query.get("max_items"):
                    items = items[-int(query["max_items"]):]
                self._json(200, dict(items))
            elif path == "/manager/reboot":  # ComfyUI-Manager's reboot route (marker + exit 0, or execv)
                self._text(200, "")
                _after(0.05, lambda: reboot(state.log))
            elif path.startswith("/history/"):
                prompt_id = path.split("/", 2)[2]
                with state.lock:
                    entry = state.history.get(prompt_id)
                self._json(200, {prompt_id: entry} if entry else {})
            elif path == "/features":
                self._json(200, json.loads((DATA / "features.json").read_text()))
            elif path == "/view":
                code, data = files.view(self.path.partition("?")[2], state.dirs)
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif path == "/models":
                self._json(200, ["checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision"])
            else:
                self._text(404, "404: Not Found")

        def do_POST(self) -> None:  # noqa: N802
            self._hang()
            path = self._path()
            if path in ("/upload/image", "/upload/mask"):
                length = int(self.headers.get("Content-Length") or 0)
                code, answer = files.upload(self.headers.get("Content-Type", ""), self.rfile.read(length), state.dirs)
                self._json(code, answer) if answer is not None else self._text(code, "")
                return
            try:
                body = self._body()
            except ValueError:
                self._text(500, "500 Internal Server Error\n\nServer got itself in trouble")
                return
            if path == "/prompt":
                self._post_prompt(body)
            elif path == "/queue":
                with state.lock:
                    if body.get("clear"):
                        state.pending.clear()
                    for prompt_id in body.get("delete", []):
                        state.pending = [p for p in state.pending if p[1] != prompt_id]
                self._text(200, "")
            elif path == "/history":
                with state.lock:
                    if body.get("clear"):
                        state.history.clear()
                self._text(200, "")
            elif path == "/interrupt":
                target = body.get("prompt_id") if isinstance(body, dict) else None
                with state.lock:
                    running = state.running[1] if state.running else None
                if target and target != running:
                    state.log(f"Prompt {target} is not currently running, skipping interrupt")
                else:
                    state.interrupted = True
                    state.log(f"Interrupting prompt {target}" if target else "Global interrupt (no prompt_id specified)")
                record("interrupt", prompt_id=target, running=running, acted=not target or target == running)
                self._text(200, "")
            elif path == "/free":
                self._text(200, "")
            elif path == "/standin/crash":  # test-only: a crash with its own traceback (not out of memory)
                self._text(200, "")
                _after(0.05, lambda: die(state.log, CRASH_TRACEBACK, 1))
            else:
                self._text(404, "404: Not Found")

        def _post_prompt(self, body: Any) -> None:
            if not isinstance(body, dict) or "prompt" not in body:
                self._json(400, {"error": {"type": "no_prompt", "message": "No prompt provided",
                                           "details": "No prompt provided", "extra_info": {}}, "node_errors": {}})
                return
            prompt = body["prompt"]
            if not isinstance(prompt, dict):
                self._text(500, "500 Internal Server Error\n\nServer got itself in trouble")
                return
            for node_id, node in prompt.items():
                if not isinstance(node, dict) or "class_type" not in node:
                    message = "Cannot execute because a node is missing the class_type property."
                    self._json(400, {"error": {"type": "invalid_prompt", "message": message,
                                               "details": f"Node ID '#{node_id}'", "extra_info": {}},
                                     "node_errors": {}})
                    return
                if node["class_type"] not in state.object_info:
                    message = f"Cannot execute because node {node['class_type']} does not exist."
                    self._json(400, {"error": {"type": "invalid_prompt", "message": message,
                                               "details": f"Node ID '#{node_id}'", "extra_info": {}},
                                     "node_errors": {}})
                    return
            if not any(files.is_output_node(n["class_type"], state.object_info) for n in prompt.values()):
                self._json(400, {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                           "details": "", "extra_info": {}}, "node_errors": {}})
                return
            if "validate" in state.modes:
                node_errors = files.validate(prompt, state.object_info, state.dirs)
                if node_errors:
                    self._json(400, {"error": {"type": "prompt_outputs_failed_validation",
                                               "message": "Prompt outputs failed validation", "details": "",
                                               "extra_info": {}}, "node_errors": node_errors})
                    return
            self._json(200, state.enqueue(prompt, body.get("extra_data", {})))

    return Handler


# ---------------------------------------------------------------------------------------------------------------


def _after(seconds: float, action) -> None:
    def run() -> None:
        time.sleep(seconds)
        action()

    threading.Thread(target=run, daemon=True).start()


def _spawn_helper(kind: str) -> None:
    """A helper process of this stand-in (orphans, escapee, group child), run by the same interpreter."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                             f"from tests.standins.comfyui import helper; helper({kind!r})"],
                            stdin=subprocess.DEVNULL, close_fds=True)
    # Reap it like a careful parent: only its own grandchildren are left for someone else to reap.
    threading.Thread(target=proc.wait, daemon=True).start()


def helper(kind: str) -> None:
    if kind == "orphan":
        # Fork a grandchild and exit at once: the grandchild is orphaned, outlives us briefly and exits.
        pid = os.fork()
        if pid == 0:
            time.sleep(0.2)
            os._exit(0)
        record("orphan", child=pid)
        os._exit(0)
    if kind == "escapee":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            record("escapee_pid")
            signal.signal(signal.SIGTERM, lambda s, f: (record("signal", signal="SIGTERM", who="escapee"),
                                                        os._exit(0)))
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    if kind == "group_child":
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, lambda s, f: (record("signal", signal=signal.Signals(s).name, who="group_child"),
                                             os._exit(0) if s in (signal.SIGTERM, signal.SIGINT) else None))
        record("group_child_started", pgid=os.getpgrp())
        time.sleep(60)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = read_modes()
    log = Log(args.log_stdout)
    record("start", argv=sys.argv, cwd=os.getcwd(), pgid=os.getpgrp(), sid=os.getsid(0), ppid=os.getppid(),
           env=sorted(os.environ), env_values={k: os.environ[k] for k in (
               "__COMFY_CLI_SESSION__", "JUPYTER_TOKEN", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED") if k in os.environ},
           modes=sorted(modes.values), **proc_status())

    if "ignore_sigterm" in modes:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "term_exit" in modes:
        code = int(modes.number("term_exit", default=0))
        signal.signal(signal.SIGTERM, lambda s, f: die(log, [], code))
    if "trap_signals" in modes:
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, lambda s, f: record("signal", signal=signal.Signals(s).name, who="comfyui"))

    if "exit2" in modes:
        parser.error("argument --preview-size: invalid int value: 'big'")
    log("Total VRAM 24106 MB, total RAM 24106 MB")
    log("pytorch version: 2.14.1+cu130 (stand-in)")
    log(f"Set vram state to: {'DISABLED' if args.cpu else 'NORMAL_VRAM'}")
    log("Device: cpu" if args.cpu else "Device: cuda:0 Stand-in GPU : cudaMallocAsync")
    if "no_driver" in modes:
        die(log, DRIVER_TRACEBACK, 1)
    if "crash_at_start" in modes:
        die(log, ["Traceback (most recent call last):", '  File "<comfyui>/nodes.py", line 2130, in load_custom_node',
                  "ModuleNotFoundError: No module named 'requests'"], int(modes.number("crash_at_start", default=1)))
    if "oom_at_start" in modes:
        die(log, OOM_TRACEBACK, 1)
    if "progress" in modes:
        for i in range(0, 101, 20):
            sys.stderr.write(f"\rLoading: {i:3d}%|{'#' * (i // 10):10s}|")
            sys.stderr.flush()
        sys.stderr.write("\n")
    log(f"Python version: {sys.version.split()[0]}")
    log(f"ComfyUI version: {VERSION}")
    if "slow_start" in modes:
        time.sleep(modes.number("slow_start"))
    for _ in range(int(modes.number("orphans", default=0))):
        _spawn_helper("orphan")
    if "escapee" in modes:
        _spawn_helper("escapee")
    if "group_child" in modes:
        _spawn_helper("group_child")

    state = State(args, modes, log)
    address = (args.listen or "127.0.0.1").split(",")[0]
    if address in ("0.0.0.0", "::"):
        address = "0.0.0.0"
    log("Starting server\n")
    try:
        server = ThreadingHTTPServer((address, args.port), make_handler(state))
    except OSError as exc:
        die(log, ["Traceback (most recent call last):",
                  '  File "<comfyui>/server.py", line 977, in start_multi_address',
                  f"OSError: [Errno {exc.errno}] error while attempting to bind on address ('{address}', {args.port}): "
                  f"{exc.strerror.lower() if exc.strerror else exc}"], 1)
    server.daemon_threads = True
    record("listening", port=server.server_address[1])
    if not (args.dont_print_server or "no_ready_line" in modes):
        shown = "127.0.0.1" if address == "0.0.0.0" else address
        log(f"To see the GUI go to: http://{shown}:{args.port}")
    threading.Thread(target=state.worker, daemon=True).start()

    if "oom_after" in modes:
        _after(modes.number("oom_after"), lambda: die(log, OOM_TRACEBACK, 1))
    if "crash_after" in modes:
        code = int(modes.number("crash_after", 1, default=1))
        _after(modes.number("crash_after"), lambda: die(log, ["RuntimeError: stand-in crash"], code))
    if "kill_self_after" in modes:
        name = modes.arg("kill_self_after", 1, "SIGSEGV") or "SIGSEGV"
        sig = int(name) if name.isdigit() else signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        _after(modes.number("kill_self_after"), lambda: (record("exiting", signal=int(sig)), os.kill(os.getpid(), sig)))
    if "hang_after" in modes:
        _after(modes.number("hang_after"), lambda: (state.hung.set(), record("hung")))
    if "reboot_after" in modes:
        _after(modes.number("reboot_after"), lambda: reboot(log))

    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        time.sleep(modes.number("sigint_delay", default=0.0))
        log("\nStopped server")
        record("exiting", code=0)
        return 0
    return 0


def reboot(log: Log) -> None:
    session = os.environ.get("__COMFY_CLI_SESSION__")
    if session:
        Path(session + ".reboot").write_text("")
        print("\nRestarting...\n\n", flush=True)
        record("exiting", code=0, reboot=True)
        os._exit(0)
    print("\nRestarting... [Legacy Mode]\n\n", flush=True)
    record("execv")
    os.execv(sys.executable, [sys.executable, *sys.argv])


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
