"""docker/docker-compose.yml and docker/.env.example against the configuration reference (the code's declarations):
no variable listed in one and missing in the other, the same defaults, nothing repeated that the code decides."""

from __future__ import annotations

import pytest
import yaml

from supervisor.cli import build_parser

from .env_example import render
from .files import (
    COMPOSE,
    ENV_EXAMPLE,
    REPO,
    compose_environment,
    compose_problems,
    dockerfile,
    effective_env,
    env_example_problems,
    healthcheck_options,
    parse_env_example,
    reference,
    secret_variables,
    seconds,
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def service(compose) -> dict:
    assert list(compose["services"]) == ["comfyui"]
    return compose["services"]["comfyui"]


def image_defaults() -> dict[str, str]:
    """What a container of the image sees for each variable when nothing is set: the code's default, or the
    Dockerfile's ENV where the image's layout differs (COMFYUI_PYTHON)."""
    defaults = reference()
    env = effective_env(dockerfile(), "models-false")
    return {name: env.get(name, value) for name, value in defaults.items()}


# ---------------------------------------------------------------------------------------------------------------
# .env.example


def test_env_example_lists_every_variable_with_its_default():
    listing = parse_env_example(ENV_EXAMPLE.read_text())
    problems = env_example_problems(listing, image_defaults())
    assert problems == [], "docker/.env.example:\n" + "\n".join(problems)
    assert len(listing.entries) == len(reference())


def test_env_example_is_the_rendering_of_the_code():
    # Descriptions too: a changed doc string shows here. Fix: python -m tests.packaging.env_example > docker/.env.example
    assert ENV_EXAMPLE.read_text() == render(), \
        "docker/.env.example is stale: python -m tests.packaging.env_example > docker/.env.example"


def test_env_example_says_what_each_variable_does():
    lines = ENV_EXAMPLE.read_text().splitlines()
    listing = parse_env_example(ENV_EXAMPLE.read_text())
    for index, line in enumerate(lines):
        for name in listing.entries:
            if line.startswith(f"# {name}="):
                above = lines[index - 1]
                assert above.startswith("# ") and "=" not in above.split()[1], f"{name}: no description above it"


def test_env_example_check_reports_each_kind_of_drift():
    # Negative control for the comparison above: every kind of mismatch is caught and named.
    expected = {"A": "1", "B": "", "C": "x"}
    text = "# A=2\n# B=\n# B=\n# D=5\nC=x\n"
    problems = env_example_problems(parse_env_example(text), expected)
    assert problems == ["B is listed twice",
                        "line 5: C is set (uncommented); list it as `# NAME=default`",
                        "C is missing: add `# C=x` with a line saying what it does",
                        "D is not read by the supervisor (typo, or a variable that was removed)",
                        "A: shows '2', the default is '1'"]


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_names_only_variables_the_code_reads(service):
    assert compose_problems(service, reference(), secret_variables()) == []
    # Configuration comes from env_file; the compose file repeats no default.
    assert set(compose_environment(service)) <= set(reference())


def test_compose_check_reports_unknown_duplicated_and_secret_values():
    defaults = reference()
    bad = {"environment": {"ENABLE_STEADYDANCR": "true", "COMFYUI_PORT": defaults["COMFYUI_PORT"],
                           "HF_TOKEN": "hf_literal", "CIVITAI_API_KEY": "${CIVITAI_API_KEY}", "LOG_LEVEL": "debug"},
           "volumes": ["/home/someone/models:/workspace/ComfyUI/models", "models:/x"]}
    problems = compose_problems(bad, defaults, secret_variables())
    assert problems == ["environment: ENABLE_STEADYDANCR is not read by the supervisor",
                        f"environment: COMFYUI_PORT={defaults['COMFYUI_PORT']} repeats the code's default; drop it",
                        "environment: HF_TOKEN holds a literal secret; put it in .env",
                        "volumes: /home/someone/models is a host path; use a named volume"]
    assert compose_problems({"environment": ["LOG_LEVEL=debug", "HF_TOKEN"]}, defaults, secret_variables()) == []


def test_compose_reads_env_file(service):
    entries = service["env_file"]
    paths = [e["path"] if isinstance(e, dict) else e for e in entries]
    assert paths == [".env"]
    assert (COMPOSE.parent / ".env.example").is_file()


def test_compose_builds_this_dockerfile(service):
    build = service["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == (REPO / "docker" / "Dockerfile")


def test_compose_reserves_the_gpus(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_compose_ports(service):
    defaults = reference()
    mapped = {}
    for port in service["ports"]:
        host, _, container = str(port).rpartition(":")
        mapped[int(container)] = host
    assert mapped == {int(defaults["COMFYUI_PORT"]): defaults["COMFYUI_PORT"],
                      int(defaults["JUPYTER_PORT"]): defaults["JUPYTER_PORT"], 22: "2222"}
    assert int(defaults["STATUS_ADDR"].rpartition(":")[2]) not in mapped


def test_compose_volumes_are_named_and_sit_on_the_code_defaults(compose, service):
    defaults = reference()
    mounts = dict(reversed(str(v).split(":", 1)) for v in service["volumes"])  # target -> volume name
    assert mounts == {"/workspace": "workspace", defaults["MODELS_DIR"]: "models",
                      f"{defaults['COMFYUI_DATA_DIR']}/output": "output"}
    assert set(mounts.values()) == set(compose["volumes"]), "every named volume is declared at the top level"
    for target in mounts:
        assert target.startswith("/workspace"), "everything that persists is under /workspace, as on RunPod"
    assert defaults["LOG_DIR"].startswith("/workspace/")


def test_compose_healthcheck_is_the_images(service):
    check = service["healthcheck"]
    options, command = healthcheck_options(next(i for i in dockerfile() if i.keyword == "HEALTHCHECK"))
    assert check["test"] == ["CMD", *command]
    assert build_parser().parse_args(check["test"][2:]).command == "health"
    for key in ("interval", "timeout", "start_period"):
        assert seconds(check[key]) == seconds(options[key.replace("_", "-")]), key
    assert check["retries"] == int(options["retries"])
    # Compose refuses start_interval on Docker Engine < 25; an unset field is taken from the image's HEALTHCHECK.
    assert "start_interval" not in check and "start-interval" in options


def test_compose_lets_the_supervisor_stop_cleanly(service):
    defaults = reference()
    stop_signal = next(i for i in dockerfile() if i.keyword == "STOPSIGNAL").args
    assert service["stop_signal"] == stop_signal
    assert service["init"] is False, "an injected init would make the supervisor PID 2"
    assert service["restart"] == "unless-stopped"
    # Docker SIGKILLs after stop_grace_period: it must outlast the drain, ComfyUI's grace and the final cleanup.
    needed = float(defaults["DRAIN_TIMEOUT"]) + float(defaults["SHUTDOWN_GRACE"]) + 10
    assert seconds(service["stop_grace_period"]) >= needed


def test_durations_parse_like_compose():
    assert seconds("30s") == 30 and seconds("30m") == 1800 and seconds("1m30s") == 90 and seconds("1h") == 3600
    assert seconds("500ms") == 0.5 and seconds(12) == 12
    for bad in ("30", "s", "1x", "30 s"):
        with pytest.raises(ValueError):
            seconds(bad)
