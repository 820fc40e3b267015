"""docker/docker-compose.yml and its CPU override docker/docker-compose.cpu.yml against the Compose Specification
(PyPI `compose-spec`: bindings of the Rust compose_spec parser, which rejects unknown keys and bad values), and
the override's effect: exactly the GPU reservation is removed. docker/structure-tests.yaml agrees with the
Dockerfile. Running them for real (podman-compose up/down, container-structure-test) is bench/image.py's job."""

from __future__ import annotations

import copy

import pytest
import yaml
from compose_spec import PyCompose

from .files import COMPOSE, REPO, dockerfile

CPU_OVERRIDE = REPO / "docker" / "docker-compose.cpu.yml"
STRUCTURE_TESTS = REPO / "docker" / "structure-tests.yaml"


class Reset:
    """The Compose Specification's `!reset` tag: drop what earlier files set."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def merge(base, override):
    """Compose's merge for what these files use: mappings merge key by key, `!reset` removes, the rest replaces."""
    if isinstance(override, Reset):
        return Reset()
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            result = merge(base.get(key), value)
            if isinstance(result, Reset):
                merged.pop(key, None)
            else:
                merged[key] = result
        return merged
    return override


@pytest.mark.parametrize("path", [COMPOSE, CPU_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_follow_the_specification(path):
    PyCompose.from_yaml(path.read_text()).validate()


def test_the_validator_rejects_what_compose_would():
    # Negative control: the same call fails on an unknown key and on a bad duration.
    text = COMPOSE.read_text()
    with pytest.raises(Exception, match="initt"):
        PyCompose.from_yaml(text.replace("init: false", "initt: false"))
    with pytest.raises(Exception, match="stop_grace_period"):
        PyCompose.from_yaml(text.replace("stop_grace_period: 30s", "stop_grace_period: soon"))


def test_the_cpu_override_removes_only_the_gpu_reservation():
    base = yaml.load(COMPOSE.read_text(), Loader=ComposeLoader)
    merged = merge(copy.deepcopy(base), yaml.load(CPU_OVERRIDE.read_text(), Loader=ComposeLoader))
    assert base["services"]["comfyui"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "devices" not in merged["services"]["comfyui"]["deploy"]["resources"]["reservations"]
    expected = copy.deepcopy(base)
    del expected["services"]["comfyui"]["deploy"]["resources"]["reservations"]["devices"]
    assert merged == expected, "the CPU override must change nothing but the GPU reservation"


def test_the_cpu_override_is_documented():
    readme = (REPO / "README.md").read_text()
    command = "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d"
    assert command in readme and command in CPU_OVERRIDE.read_text()


def test_structure_tests_agree_with_the_dockerfile():
    tests = yaml.safe_load(STRUCTURE_TESTS.read_text())
    assert tests["schemaVersion"] == "2.0.0"
    meta = tests["metadataTest"]
    instructions = [i for i in dockerfile() if i.stage == "base"]
    entry = next(i for i in instructions if i.keyword == "ENTRYPOINT").exec_form()
    cmd = next(i for i in instructions if i.keyword == "CMD").exec_form()
    exposed = next(i for i in instructions if i.keyword == "EXPOSE").args.split()
    workdir = next(i for i in instructions if i.keyword == "WORKDIR").args
    assert (meta["entrypoint"], meta["cmd"], sorted(meta["exposedPorts"]), meta["workdir"]) == \
        (entry, cmd, sorted(exposed), workdir)
    names = [t["name"] for t in tests["commandTests"]]
    assert len(names) == len(set(names)) and "every pack is at the commit config/packs.toml pins" in names
