""".github/workflows/image.yml builds docker/Dockerfile after the test suite passes, pushes only outside pull
requests, and runs only actions pinned by commit."""

from __future__ import annotations

import re

import pytest
import yaml

from .files import IMAGE_WORKFLOW, REPO, secret_variables


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(IMAGE_WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def build_step(workflow: dict) -> dict:
    found = [s for s in steps(workflow, "image") if s.get("uses", "").startswith("docker/build-push-action@")]
    assert len(found) == 1
    return found[0]


def test_image_is_built_only_after_the_test_suite(workflow):
    assert workflow["jobs"]["image"]["needs"] == "test"
    commands = [s.get("run", "") for s in steps(workflow, "test")]
    assert "bash .ci/run" in commands  # the project's CI entry point: includes hadolint and the packaging tests
    assert (REPO / ".ci" / "run").is_file()


def test_build_uses_the_dockerfile_from_the_repository_root(workflow):
    with_ = build_step(workflow)["with"]
    assert with_["context"] == "."
    assert (REPO / with_["file"]).resolve() == (REPO / "docker" / "Dockerfile")
    assert with_["push"] == "${{ github.event_name != 'pull_request' }}"
    assert "pull_request" in with_["cache-to"] and with_["cache-from"].startswith("type=registry")


def test_triggers(workflow):
    on = workflow["on"]
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"] == ["v*"]
    assert "docker/**" in on["pull_request"]["paths"] and ".github/workflows/image.yml" in on["pull_request"]["paths"]


def test_permissions_are_least_privilege(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["jobs"]["image"]["permissions"] == {"contents": "read", "packages": "write"}
    login = [s for s in steps(workflow, "image") if s.get("uses", "").startswith("docker/login-action@")]
    assert len(login) == 1 and login[0]["if"] == "github.event_name != 'pull_request'"
    assert login[0]["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"


def test_actions_are_pinned_by_commit():
    text = IMAGE_WORKFLOW.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert len(uses) >= 6
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref}: pin the action to a commit"
        assert re.search(r"# v\d+\.\d+\.\d+", comment), f"{ref}: name the release in a comment"


def test_no_supervisor_secret_or_build_arg_token(workflow):
    text = IMAGE_WORKFLOW.read_text()
    for name in secret_variables():
        assert name not in text, f"{name} must not be passed to the build (image history keeps build args)"
    assert "build-args" not in build_step(workflow)["with"]


def test_pack_commits_become_labels(workflow):
    step = next(s for s in steps(workflow, "image") if s.get("id") == "packs")
    assert "python3 docker/install_packs.py labels config/packs.toml" in step["run"]
    assert "${{ steps.packs.outputs.labels }}" in build_step(workflow)["with"]["labels"]
    assert "${{ steps.meta.outputs.labels }}" in build_step(workflow)["with"]["labels"]
