"""The environment, parsed once into a frozen `Settings`. Every rule about environment variables lives here (the
parsers of single values in `values.py`).

Each variable is declared once, as a dataclass field carrying its name, default, parser and meaning; the README's
configuration reference is checked against these declarations by a test. Feature switches (`ENABLE_*`) and their
variant variables come from the catalogue, so adding a model needs no code. Reading the environment (every problem at
once) is environment.py's job.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .values import (Secret, _address, _args, _choice, _float, _int, _listen,
                     _optional_address, _optional_path, _path, _paths, _ports, _secret, _text, _url, _workflow_file,
                     parse_bool)

if TYPE_CHECKING:
    from .catalog import Catalog

# ---------------------------------------------------------------------------------------------------------------
# Declarations


def var(name: str, default: str, parser: Callable[[str], Any], doc: str, *, group: str, secret: bool = False) -> Any:
    """Declare a setting read from environment variable `name`; `default` is the text used when it is unset."""
    meta = {"env": name, "raw_default": default, "parser": parser, "doc": doc, "group": group, "secret": secret}
    return field(default=parser(default) if default != "" or parser in _EMPTY_OK else None, metadata=meta)


_EMPTY_OK: set[Callable[[str], Any]] = {_text, _secret, _args, _optional_path, _paths, _ports, _optional_address,
                                        _workflow_file}


@dataclass(frozen=True)
class FeatureSelection:
    """What the environment asks of one catalogue feature."""

    enabled: bool
    explicit: bool = False  # the switch was set in the environment (not just its default)
    variant: str | None = None  # the raw choice: "auto", a variant name, a family like "gguf"; None if no variants
    choices: tuple[str, ...] = ()  # for multi-choice features such as CONTROLNET_MODELS


@dataclass(frozen=True)
class Settings:
    # Hardware and memory planning
    gpu_memory_mode: str = var(
        "GPU_MEMORY_MODE", "auto", _choice("auto", "full", "model_cpu_offload", "sequential_cpu_offload"),
        "How model weights use VRAM: `auto` (plan from the hardware), `full` (all resident), `model_cpu_offload` "
        "(block swap as needed), `sequential_cpu_offload` (swap every block).", group="hardware")
    gpu_tier: str = var(
        "GPU_TIER", "auto", _choice("auto", "consumer", "prosumer", "datacenter"),
        "Template tier, any case: `auto` derives it from VRAM (>= 48000 MiB datacenter, >= 20000 MiB prosumer). "
        "Gates `ENABLE_INFCAM`.", group="hardware")
    attention_mode: str = var(
        "ATTENTION_MODE", "auto",
        _choice("auto", "sdpa", "sageattn", "flash_attn_2", "flash_attn_3", "comfy"),
        "Attention kernel for ComfyUI-WanVideoWrapper; `auto` = `sdpa`, which works without extra packages.",
        group="hardware")
    disk_reserve_gb: float = var(
        "DISK_RESERVE_GB", "5", _float(0),
        "Free space (GB) that downloads must leave on the models volume.", group="hardware")

    # Paths
    models_dir: Path = var(
        "MODELS_DIR", "/workspace/ComfyUI/models", _path,
        "Root of the model folders (on the persistent volume).", group="paths")
    comfyui_dir: Path = var(
        "COMFYUI_DIR", "/opt/ComfyUI", _path, "ComfyUI installation (holds `main.py`).", group="paths")
    comfyui_data_dir: Path = var(
        "COMFYUI_DATA_DIR", "/workspace/ComfyUI", _path,
        "Holds ComfyUI's `input/`, `output/` and `user/` folders (on the persistent volume).", group="paths")
    log_dir: Path = var(
        "LOG_DIR", "/workspace/logs", _path, "Where the rotating `comfyui.log` is written.", group="paths")
    supervisor_catalog: tuple[Path, ...] = var(
        "SUPERVISOR_CATALOG", "", _paths,
        "Extra catalogue TOML files (`:` or `,` separated) that add or override features and files.",
        group="paths")

    # ComfyUI launch
    comfyui_port: int = var("COMFYUI_PORT", "8188", _int(1, 65535), "ComfyUI's HTTP port.", group="comfyui")
    comfyui_per_gpu: bool = var(
        "COMFYUI_PER_GPU", "false", parse_bool,
        "One ComfyUI per visible GPU, each with its own plan, port, log and restarts; off: one ComfyUI on the "
        "largest GPU.", group="comfyui")
    comfyui_ports: tuple[int, ...] = var(
        "COMFYUI_PORTS", "", _ports,
        "With `COMFYUI_PER_GPU`: the instances' ports in GPU order (comma list); empty = `COMFYUI_PORT`, then "
        "`COMFYUI_PORT`+100, +200, ..., skipping the status and JupyterLab ports.", group="comfyui")
    comfyui_listen: str = var(
        "COMFYUI_LISTEN", "0.0.0.0", _listen, "Address ComfyUI listens on (`--listen`).", group="comfyui")
    comfyui_args: tuple[str, ...] = var(
        "COMFYUI_ARGS", "", _args,
        "Extra ComfyUI flags, appended after the plan's flags (a flag given here wins).", group="comfyui")
    comfyui_command: tuple[str, ...] = var(
        "COMFYUI_COMMAND", "", _args,
        "Replaces the whole ComfyUI command line (custom launchers); the plan's flags are then not added.",
        group="comfyui")
    comfyui_python: str = var(
        "COMFYUI_PYTHON", "", _text, "Python that runs ComfyUI; empty = the supervisor's own.", group="comfyui")
    comfyui_pass_secrets: bool = var(
        "COMFYUI_PASS_SECRETS", "false", parse_bool,
        "Pass HF_TOKEN and the other secrets to ComfyUI's environment.", group="comfyui")

    # Health, restarts, shutdown
    startup_timeout: float = var(
        "STARTUP_TIMEOUT", "600", _float(1),
        "Seconds a live ComfyUI may take to answer `/system_stats` before it is restarted.", group="supervise")
    health_interval: float = var(
        "HEALTH_INTERVAL", "10", _float(0.1), "Seconds between liveness checks.", group="supervise")
    health_timeout: float = var(
        "HEALTH_TIMEOUT", "5", _float(0.1), "Seconds one liveness check may take.", group="supervise")
    health_failures: int = var(
        "HEALTH_FAILURES", "3", _int(1), "Failed liveness checks in a row that mean a hang (kill and restart).",
        group="supervise")
    ready_max_queue: int = var(
        "READY_MAX_QUEUE", "0", _int(0), "Not ready while more prompts than this are queued; 0 = no limit.",
        group="supervise")
    warmup_workflow: Path | None = var(
        "WARMUP_WORKFLOW", "", _workflow_file,
        "API-format workflow run once after start; ready only after it succeeds.", group="supervise")
    restart_backoff_initial: float = var(
        "RESTART_BACKOFF_INITIAL", "1", _float(0), "First restart delay (s); doubles on each failure.",
        group="supervise")
    restart_backoff_max: float = var(
        "RESTART_BACKOFF_MAX", "60", _float(0), "Longest restart delay (s).", group="supervise")
    restart_stable_after: float = var(
        "RESTART_STABLE_AFTER", "300", _float(0), "Uptime (s) after which the backoff resets.", group="supervise")
    restart_max: int = var(
        "RESTART_MAX", "5", _int(1),
        "Failures within `RESTART_WINDOW` after which the supervisor gives up and exits non-zero.",
        group="supervise")
    restart_window: float = var(
        "RESTART_WINDOW", "600", _float(1), "Window (s) for counting failures.", group="supervise")
    oom_downgrade: bool = var(
        "OOM_DOWNGRADE", "true", parse_bool,
        "After an out-of-memory exit, restart with the next lower step of the plan.", group="supervise")
    oom_step_down: str = var(
        "OOM_STEP_DOWN", "idle", _choice("idle", "next-start", "off"),
        "After `OOM_STEP_DOWN_AFTER` out-of-memory errors inside prompts on one rung: `idle` restarts ComfyUI on the "
        "next rung of the plan's ladder once no prompt is queued; `next-start` only remembers the rung for the next "
        "start; `off` counts and reports them.", group="supervise")
    oom_step_down_after: int = var(
        "OOM_STEP_DOWN_AFTER", "2", _int(1),
        "In-prompt out-of-memory errors on the current rung before `OOM_STEP_DOWN` acts.", group="supervise")
    oom_retry_prompt: bool = var(
        "OOM_RETRY_PROMPT", "false", parse_bool,
        "After an `idle` step-down, submit the prompt that ran out of memory once more on the new rung.",
        group="supervise")
    shutdown_grace: float = var(
        "SHUTDOWN_GRACE", "8", _float(0),
        "Seconds between SIGTERM to ComfyUI and SIGKILL (fits `docker stop`'s 10 s).", group="supervise")
    drain_timeout: float = var(
        "DRAIN_TIMEOUT", "0", _float(0),
        "On SIGTERM, seconds to let the running prompt finish before stopping; 0 = do not wait.",
        group="supervise")
    prewarm: bool = var(
        "PREWARM", "false", parse_bool,
        "After ready, read the plan's weights once so the first prompt loads from the page cache.",
        group="supervise")
    ready_when: str = var(
        "READY_WHEN", "all", _choice("all", "any"),
        "With several ComfyUI instances (`COMFYUI_PER_GPU`): the pod is ready when `all` are ready, or when `any` "
        "is.", group="supervise")
    status_addr: tuple[str, int] = var(
        "STATUS_ADDR", "127.0.0.1:8189", _address,
        "HOST:PORT of the supervisor's status page (`/`), `/status`, `/metrics`, `/healthz` and `/readyz`.",
        group="supervise")
    status_public: bool = var(
        "STATUS_PUBLIC", "false", parse_bool,
        "Serve the status page and endpoints off loopback: on all interfaces at STATUS_ADDR's port (or at "
        "STATUS_ADDR when that is not loopback), for RunPod's HTTP proxy, a compose port or Kubernetes probes. Set "
        "`STATUS_TOKEN` with it; without one everything is open (a warning says so).", group="supervise")
    status_token: Secret = var(
        "STATUS_TOKEN", "", _secret,
        "Token for the status page, `/status` and `/metrics` from other hosts (`?token=`, then a cookie; or "
        "`Authorization: Bearer`). `/healthz` and `/readyz` stay open. Never logged.", group="supervise",
        secret=True)

    # Downloads
    hf_token: Secret = var(
        "HF_TOKEN", "", _secret, "Hugging Face token for gated repos. Never logged.", group="fetch", secret=True)
    hf_endpoint: str = var(
        "HF_ENDPOINT", "https://huggingface.co", _url, "Hugging Face Hub or mirror base URL.", group="fetch")
    hf_hub_offline: bool = var(
        "HF_HUB_OFFLINE", "false", parse_bool,
        "Make no network request: succeed if every file is present, else list what is missing.", group="fetch")
    civitai_api_key: Secret = var(
        "CIVITAI_API_KEY", "", _secret, "CivitAI token (sent as a header, never in a URL). Never logged.",
        group="fetch", secret=True)
    dry_run: bool = var(
        "DRY_RUN", "false", parse_bool, "List what would be downloaded and its size; download nothing.",
        group="fetch")
    verify_downloads: bool = var(
        "VERIFY_DOWNLOADS", "false", parse_bool,
        "Re-hash every present file at start instead of trusting its verified marker.", group="fetch")
    download_timeout: float = var(
        "DOWNLOAD_TIMEOUT", "0", _float(0),
        "Deadline (s) for one file, retries included; 0 = none (the template's 1800 s restarted big files).",
        group="fetch")
    download_stall_timeout: float = var(
        "DOWNLOAD_STALL_TIMEOUT", "60", _float(1),
        "Seconds without a byte before a connection is dropped and retried.", group="fetch")
    download_retries: int = var(
        "DOWNLOAD_RETRIES", "10", _int(0), "Retries per file for transient errors.", group="fetch")
    download_concurrency: int = var(
        "DOWNLOAD_CONCURRENCY", "3", _int(1, 32), "Files downloaded at once.", group="fetch")
    download_connections: int = var(
        "DOWNLOAD_CONNECTIONS", "8", _int(1, 64), "Parallel ranged connections per large file.", group="fetch")

    # Workflow knobs (ComfyUI-WanVideoWrapper SteadyDancer workflows)
    steadydancer_guide_scale: float = var(
        "STEADYDANCER_GUIDE_SCALE", "5.0", _float(0, 30), "cfg of the `quality` workflow.", group="workflow")
    steadydancer_condition_guide: float = var(
        "STEADYDANCER_CONDITION_GUIDE", "1.0", _float(0, 100),
        "Original condition guide scale; no input in ComfyUI-WanVideoWrapper (warned, no effect).",
        group="workflow")
    steadydancer_end_cfg: float = var(
        "STEADYDANCER_END_CFG", "0.4", _float(0, 1),
        "Original end_cond_cfg (end of its condition-guidance window); no input in ComfyUI-WanVideoWrapper "
        "(warned, no effect).", group="workflow")
    steadydancer_seed: int = var(
        "STEADYDANCER_SEED", "106060", _int(0, 2**64 - 1), "Sampler seed of both presets.", group="workflow")
    steadydancer_steps: int = var(
        "STEADYDANCER_STEPS", "40", _int(1, 200), "Steps of the `quality` workflow.", group="workflow")
    turbo_steps: int = var("TURBO_STEPS", "4", _int(1, 100), "Steps of the `fast` (lightx2v) workflow.",
                           group="workflow")
    turbo_guide_scale: float = var(
        "TURBO_GUIDE_SCALE", "1.0", _float(0, 30),
        "cfg of the `fast` workflow; the lightx2v LoRA is distilled for 1.0.", group="workflow")
    turbo_condition_guide: float = var(
        "TURBO_CONDITION_GUIDE", "1.0", _float(0, 100),
        "Template knob with no input in ComfyUI-WanVideoWrapper (warned, no effect).", group="workflow")
    turbo_end_cfg: float = var(
        "TURBO_END_CFG", "0.4", _float(0, 1),
        "Template knob with no input in ComfyUI-WanVideoWrapper (warned, no effect).", group="workflow")
    dwpose_detect_hand: bool = var(
        "DWPOSE_DETECT_HAND", "true", parse_bool, "Draw hand keypoints in the pose video.", group="workflow")
    dwpose_detect_body: bool = var(
        "DWPOSE_DETECT_BODY", "true", parse_bool, "Draw body keypoints in the pose video.", group="workflow")
    dwpose_detect_face: bool = var(
        "DWPOSE_DETECT_FACE", "true", parse_bool,
        "Draw head keypoints (DrawViTPose `draw_head`; SteadyDancer was not trained with face points, kijai #1684).",
        group="workflow")
    dwpose_resolution: int = var(
        "DWPOSE_RESOLUTION", "512", _int(64, 4096),
        "Template's DWPose resolution; the YOLO + ViTPose path has no such input (warned, no effect).",
        group="workflow")
    check_workflows: bool = var(
        "CHECK_WORKFLOWS", "true", parse_bool,
        "Validate the shipped workflows against the running ComfyUI's `/object_info`.", group="workflow")
    check_blocks_ready: bool = var(
        "CHECK_BLOCKS_READY", "false", parse_bool, "Keep `/readyz` false while the workflow check fails.",
        group="workflow")

    # Side services of the template
    public_key: str = var("PUBLIC_KEY", "", _text, "SSH public key; starts sshd when set.", group="services")
    jupyter_password: Secret = var(
        "JUPYTER_PASSWORD", "", _secret, "Starts JupyterLab on `JUPYTER_PORT` with this token when set.",
        group="services", secret=True)
    jupyter_port: int = var("JUPYTER_PORT", "8888", _int(1, 65535), "JupyterLab's port.", group="services")
    jupyter_allow_origin: str = var(
        "JUPYTER_ALLOW_ORIGIN", "", _text,
        "Origin JupyterLab accepts cross-origin requests from (`*` for any); empty = its own origin only.",
        group="services")
    update_nodes_on_start: bool = var(
        "UPDATE_NODES_ON_START", "false", parse_bool,
        "`git pull` every custom node while the weights download; ComfyUI waits for it at most 60 s.",
        group="services")
    enable_r2_sync: bool = var(
        "ENABLE_R2_SYNC", "false", parse_bool,
        "Upload every finished prompt's outputs to the `R2_BUCKET` bucket (R2 or any S3-compatible store) in the "
        "background, once each, with retries; needs `R2_BUCKET`.", group="services")
    r2_endpoint: str = var(
        "R2_ENDPOINT", "", _text,
        "S3 endpoint of the output bucket, e.g. `https://<account>.r2.cloudflarestorage.com`; empty = AWS S3.",
        group="services")
    r2_bucket: str = var(
        "R2_BUCKET", "", _text,
        "Bucket for outputs: `ENABLE_R2_SYNC` uploads a pod's outputs there; the serverless worker uploads its "
        "outputs there and returns URLs.", group="services")
    r2_access_key_id: Secret = var(
        "R2_ACCESS_KEY_ID", "", _secret, "Key id for the bucket; empty = boto3's own credentials (env, IAM role). "
        "Never logged.", group="services", secret=True)
    r2_secret_access_key: Secret = var("R2_SECRET_ACCESS_KEY", "", _secret, "Secret key for the bucket. Never logged.",
                                       group="services", secret=True)
    r2_region: str = var(
        "R2_REGION", "auto", _text, "Signing region: `auto` for R2, the bucket's region for AWS S3.",
        group="services")
    r2_public_url: str = var(
        "R2_PUBLIC_URL", "", _text,
        "Public base URL of the bucket (an R2 custom domain): output URLs are then `<R2_PUBLIC_URL>/<key>` "
        "instead of presigned.", group="services")
    r2_url_expiry: int = var(
        "R2_URL_EXPIRY", "604800", _int(1, 604800),
        "Seconds a presigned output URL stays valid (at most 7 days).", group="services")
    r2_prefix: str = var(
        "R2_PREFIX", "comfyui-outputs/{pod}", _text,
        "Key prefix of `ENABLE_R2_SYNC` uploads: `<R2_PREFIX>/<subfolder>/<file>`; `{pod}` is `RUNPOD_POD_ID`, or an "
        "id kept on the volume, so pods sharing a bucket never overwrite each other.", group="services")
    storage_mode: str = var(
        "STORAGE_MODE", "auto", _choice("auto", "persistent", "ephemeral"),
        "Template variable, read by nothing there either; accepted and reported only.", group="services")

    # RunPod Serverless worker
    serverless: bool = var(
        "SERVERLESS", "false", parse_bool,
        "Run a RunPod Serverless worker (`supervisor worker`) beside ComfyUI: it takes jobs once the pod is ready. "
        "sshd and JupyterLab are not started.", group="serverless")
    serverless_api_addr: tuple[str, int] | None = var(
        "SERVERLESS_API_ADDR", "", _optional_address,
        "HOST:PORT to serve the runpod SDK's local test API (`/run`, `/runsync`, `/status`) instead of taking jobs "
        "from RunPod's queue: for trying a worker image on your own machine.", group="serverless")
    serverless_output: str = var(
        "SERVERLESS_OUTPUT", "auto", _choice("auto", "base64", "s3"),
        "How a job returns its outputs: `s3` uploads them to `R2_BUCKET` and returns URLs, `base64` puts them in "
        "the result (RunPod caps a result at 20 MB), `auto` = `s3` when `R2_BUCKET` is set.", group="serverless")
    serverless_job_timeout: float = var(
        "SERVERLESS_JOB_TIMEOUT", "0", _float(0),
        "Seconds a job may run in ComfyUI before its prompt is interrupted and the job fails; 0 = no limit here "
        "(the endpoint's execution timeout still applies).", group="serverless")
    serverless_ready_timeout: float = var(
        "SERVERLESS_READY_TIMEOUT", "600", _float(0),
        "Seconds a job waits for the pod to be ready again (a ComfyUI restart) before it fails.",
        group="serverless")

    # Logging
    log_format: str = var(
        "LOG_FORMAT", "auto", _choice("auto", "json", "console"),
        "`json` lines, `console` text, or `auto` (JSON unless writing to a terminal).", group="logging")
    log_level: str = var(
        "LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"), "Lowest level logged.",
        group="logging")

    # Filled from the catalogue by load_settings, not read directly from one variable.
    features: Mapping[str, FeatureSelection] = field(default_factory=dict, metadata={"env": None})
    warnings: tuple[str, ...] = field(default=(), metadata={"env": None})

    # -----------------------------------------------------------------------------------------------------------

    @property
    def python(self) -> str:
        return self.comfyui_python or sys.executable

    def secrets(self) -> list[str]:
        """Values that must never appear in logs, plan output or child command lines."""
        return [str(getattr(self, f.name)) for f in fields(self) if f.metadata.get("secret")]

    def enabled_features(self) -> list[str]:
        return [name for name, sel in self.features.items() if sel.enabled]


def declared_variables() -> list[dict[str, Any]]:
    """The fixed variables (not the catalogue's), for the README and `.env.example` checks."""
    return [dict(f.metadata) | {"field": f.name} for f in fields(Settings) if f.metadata.get("env")]


def variable_defaults(catalog: "Catalog") -> dict[str, str]:
    """Every variable the supervisor reads -> the text of its default: the fixed ones, then each feature's switch,
    variant and list variables. The README, `.env.example` and the compose file are checked against this."""
    variables = {v["env"]: v["raw_default"] for v in declared_variables()}
    for feature in catalog.features.values():
        variables[feature.switch] = "true" if feature.default_enabled else "false"
        if feature.variant_env:
            variables[feature.variant_env] = feature.variant_default
        if feature.dynamic:
            variables[feature.dynamic.env] = ""
    return variables
