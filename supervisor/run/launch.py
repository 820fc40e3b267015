"""How ComfyUI is started: its command line, its environment and its flags (its HTTP API is client.py).

The command is `COMFYUI_PYTHON main.py --listen COMFYUI_LISTEN --port COMFYUI_PORT` + path flags + the plan's flags
(which already end with COMFYUI_ARGS, so a flag given there wins), run in COMFYUI_DIR. COMFYUI_COMMAND replaces
all of it for custom launchers. Path flags point ComfyUI at the volume: `--extra-model-paths-config` (a generated
YAML mapping every model folder to MODELS_DIR/<folder>) and input/output/user directories under
COMFYUI_DATA_DIR; each is added only if the installed ComfyUI knows it.

Flags are checked against the installed ComfyUI's own `--help` before launch: argparse exits 2 on an unknown flag
(the old template's `--medvram` put pods into a restart loop), so an unknown flag is reported by name instead.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import Problem

# Model folder types of ComfyUI 0.3.64 (folder_paths); the catalogue's folders are added to these.
COMFY_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders")
READY_LINE = "To see the GUI go to:"
LEGACY_REBOOT_LINE = "Restarting... [Legacy Mode]"
SESSION_ENV = "__COMFY_CLI_SESSION__"  # ComfyUI-Manager then asks for a reboot with a marker file + exit(0)
# Variables that hold credentials even if not declared as settings.
EXTRA_SECRET_NAMES = ("HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")


@dataclass(frozen=True)
class Launch:
    """Everything needed to start ComfyUI once."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(repr=False)
    url: str
    custom: bool  # COMFYUI_COMMAND: flags were not built or checked by us
    session: Path  # ComfyUI-Manager's reboot marker is this path + ".reboot"
    model_paths: Path | None = None

    @property
    def reboot_marker(self) -> Path:
        return Path(f"{self.session}.reboot")


def state_dir(settings) -> Path:
    """Files the supervisor generates for ComfyUI; on the data volume because COMFYUI_DIR may be read-only."""
    # Absolute: ComfyUI runs in COMFYUI_DIR, so a relative COMFYUI_DATA_DIR would point elsewhere for it.
    return Path(settings.comfyui_data_dir).absolute() / ".supervisor"


def model_folders(catalog) -> list[str]:
    return list(dict.fromkeys([*COMFY_FOLDERS, *catalog.folders]))


def write_model_paths(settings, catalog) -> Path:
    """The extra_model_paths YAML that maps each folder to MODELS_DIR/<folder> (listed first: is_default)."""
    path = state_dir(settings) / "extra_model_paths.yaml"
    lines = ["# Written by the supervisor at every start: ComfyUI reads the models volume from here.",
             "supervisor_models:", f"  base_path: {json.dumps(str(Path(settings.models_dir).absolute()))}",
             "  is_default: true"]
    lines += [f"  {folder}: {json.dumps(folder)}" for folder in model_folders(catalog)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def data_dirs(settings, instance=None) -> dict[str, Path]:
    """ComfyUI's folders on the volume. With one ComfyUI per GPU, the first instance keeps these and every other
    gets its own user folder (its workflows are resolved for its own GPU's plan; its own database), its own temp
    folder (ComfyUI empties it at start) and its own output folder under the first one's (ComfyUI numbers files by
    listing the folder: two processes in one folder could pick the same name). Inputs are shared."""
    base = Path(settings.comfyui_data_dir).absolute()
    dirs = {"--input-directory": base / "input", "--output-directory": base / "output",
            "--user-directory": base / "user"}
    if instance is not None and instance.per_gpu and instance.index > 0:
        own = base / "instances" / instance.name
        dirs.update({"--output-directory": base / "output" / f"gpu{instance.index}", "--user-directory": own / "user",
                     "--temp-directory": own})
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)  # --user-directory must exist (argparse checks it)
    return dirs


def build_launch(plan, settings, catalog, known: set[str] | None, environ: Mapping[str, str],
                 instance=None) -> Launch:
    """The command for this plan (and instance, with COMFYUI_PER_GPU). `known` is the installed ComfyUI's flags
    (None if its --help failed)."""
    suffix = f"-{instance.index}" if instance is not None and instance.per_gpu and instance.index > 0 else ""
    session = state_dir(settings) / f"comfyui-session{suffix}"
    session.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(settings, environ, catalog)
    env[SESSION_ENV] = str(session)
    env.setdefault("PYTHONUNBUFFERED", "1")  # prints reach the log before a crash, not after
    # The plan numbers GPUs in PCI order (NVML's) and `--cuda-device` names one that way; CUDA's own default order
    # is fastest first, which differs exactly when the cards differ, the only case where the flag is used.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # comfyui_controlnet_aux reads its weights (DWPose, ...) from here: the catalogue puts them under annotators/.
    env.setdefault("AUX_ANNOTATOR_CKPTS_PATH", str(Path(settings.models_dir).absolute() / "annotators"))
    if instance is not None and instance.cuda_visible_devices:
        env["CUDA_VISIBLE_DEVICES"] = instance.cuda_visible_devices  # its own GPU, as cuda:0
    port = instance.port if instance is not None else settings.comfyui_port
    cwd = Path(settings.comfyui_dir)
    if settings.comfyui_command:
        return Launch(argv=tuple(settings.comfyui_command), cwd=cwd if cwd.is_dir() else Path("/"), env=env,
                      url=probe_url(settings.comfyui_listen, port, ()), custom=True, session=session)
    user = tuple(plan.comfyui_args)
    argv: list[str] = [settings.python, "main.py"]
    if not _has(user, "--listen"):
        argv += ["--listen", settings.comfyui_listen]
    if not _has(user, "--port"):
        argv += ["--port", str(port)]
    model_paths = None
    if known is None or "--extra-model-paths-config" in known:
        model_paths = write_model_paths(settings, catalog)
        argv += ["--extra-model-paths-config", str(model_paths)]
    dirs = data_dirs(settings, instance)
    for flag, path in dirs.items():
        if (known is None or flag in known) and not _has(user, flag):
            argv += [flag, str(path)]
    if (known is None or "--database-url" in known) and not _has(user, "--database-url"):
        # Its default lives in COMFYUI_DIR/user, which --user-directory moves away from: ComfyUI then logs "unable
        # to open database file" (seen on the H100 run). Keep it beside the user data, on the volume.
        database = dirs["--user-directory"] / "comfyui.db"
        argv += ["--database-url", f"sqlite:///{database}"]
    argv += user
    listen = _value(user, "--listen") or settings.comfyui_listen
    port = int(_value(user, "--port") or port)
    return Launch(argv=tuple(argv), cwd=cwd, env=env, url=probe_url(listen, port, user), custom=False,
                  session=session, model_paths=model_paths)


def probe_url(listen: str, port: int, args: Sequence[str]) -> str:
    """Where the supervisor reaches ComfyUI: loopback when it listens on every address."""
    host = (listen.split(",")[0].strip() or "127.0.0.1") if listen else "127.0.0.1"
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if _has(args, "--tls-keyfile") else "http"
    return f"{scheme}://{host}:{port}"


def secret_names(settings, catalog, environ: Mapping[str, str]) -> set[str]:
    """Names of variables that carry credentials: declared secrets, the catalogue's auth variables, R2_*, and any
    variable whose value is a secret's value."""
    from dataclasses import fields

    names = {f.metadata["env"] for f in fields(settings) if f.metadata.get("secret") and f.metadata.get("env")}
    names |= {spec.auth_env for spec in catalog.files.values() if getattr(spec, "auth_env", "")}
    names |= set(EXTRA_SECRET_NAMES)
    names |= {name for name in environ if name.startswith("R2_")}
    values = {v for v in settings.secrets() if v and len(v) >= 4}
    names |= {name for name, value in environ.items() if value in values}
    return names


def child_env(settings, environ: Mapping[str, str], catalog) -> dict[str, str]:
    """ComfyUI's environment: ours without credentials, unless COMFYUI_PASS_SECRETS=true."""
    if settings.comfyui_pass_secrets:
        return dict(environ)
    hidden = secret_names(settings, catalog, environ)
    return {k: v for k, v in environ.items() if k not in hidden}


# -- flags ------------------------------------------------------------------------------------------------------


def help_argv(settings) -> tuple[list[str], Path]:
    return [settings.python, "main.py", "--help"], Path(settings.comfyui_dir)


def parse_help(text: str) -> set[str]:
    """The option strings in argparse's --help output (a word cut at a line break, "--base-", is not one)."""
    return {flag for flag in _FLAG.findall(text) if not flag.endswith("-")}


def check_flags(args: Sequence[str], known: set[str], user_args: Sequence[str]) -> list[Problem]:
    """Problems for every flag ComfyUI would reject. argparse also accepts a unique prefix of a flag."""
    problems: list[Problem] = []
    user = set(user_args)
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            continue
        flag = arg.split("=", 1)[0]
        if flag in known or len([k for k in known if k.startswith(flag)]) == 1:
            continue
        where = "COMFYUI_ARGS" if arg in user else "the plan"
        close = difflib.get_close_matches(flag, sorted(known), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        problems.append(Problem(where, f"ComfyUI does not accept {flag}",
                                f"{hint}remove it; `python main.py --help` in COMFYUI_DIR lists the flags of the "
                                "installed version"))
    return problems


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _value(args: Sequence[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


# -- the flag check's cache -------------------------------------------------------------------------------------
# `main.py --help` imports most of ComfyUI (0.13 s on an H100 pod, more on a slow volume) and says the same thing
# until the checkout or its Python changes: its answer is kept, keyed by what could change it.


def checkout_identity(settings) -> dict[str, object]:
    """What ComfyUI's flags depend on: the Python, and the files that define the command line (size and mtime;
    a `git pull` or a new image changes them), plus the checkout's git HEAD when there is one."""
    root = Path(settings.comfyui_dir)
    files = {}
    for rel in ("main.py", "comfy/cli_args.py", ".git/HEAD"):
        try:
            stat = (root / rel).stat()
            files[rel] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            files[rel] = None
    try:
        head = (root / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            head = (root / ".git" / head[5:]).read_text().strip()
    except OSError:
        head = ""
    return {"comfyui_dir": str(root.resolve()), "python": settings.python, "files": files, "head": head}


def cached_flags(settings) -> set[str] | None:
    import json

    try:
        data = json.loads((state_dir(settings) / "comfyui-flags.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("identity") != checkout_identity(settings) or not isinstance(data.get("flags"), list):
        return None
    return set(data["flags"])


def store_flags(settings, flags: set[str]) -> None:
    import json
    import os

    path = state_dir(settings) / "comfyui-flags.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": checkout_identity(settings), "flags": sorted(flags)}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: the next start asks --help again
