"""config/packs.toml (ComfyUI and the node packs, pinned) and docker/install_packs.py, the installer the Dockerfile
runs. The installer is run for real, as a program, against local git repositories standing in for GitHub and for
a mirror that lacks files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .files import REPO, reference

INSTALLER = REPO / "docker" / "install_packs.py"
PACKS = REPO / "config" / "packs.toml"
SHA = re.compile(r"^[0-9a-f]{40}$")

# The version set checked against a running ComfyUI (reference steadydancer-models.md §8), by short SHA as recorded
# there. Change pins only as a set that was validated together.
TESTED_SET = {
    "ComfyUI": ("https://github.com/Comfy-Org/ComfyUI.git", ("a125cd84",)),
    "ComfyUI-WanVideoWrapper": ("https://github.com/kijai/ComfyUI-WanVideoWrapper.git", ("088128b2",)),
    "ComfyUI-KJNodes": ("https://github.com/kijai/ComfyUI-KJNodes.git", ("3fcd22f", "f0d49668")),
    "ComfyUI-VideoHelperSuite": ("https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite.git", ("4ee72c06",)),
    "ComfyUI-WanAnimatePreprocess": ("https://github.com/kijai/ComfyUI-WanAnimatePreprocess.git", ("1a35b81a",)),
}
TOKENIZER_FILES = ("configs/T5_tokenizer/spiece.model", "configs/T5_tokenizer/tokenizer.json",
                   "qwen/tokenizer/tokenizer.json")
BIG = 4 * 1024 * 1024


def installer(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INSTALLER), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), **(env or {})})


def git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(cwd), "PATH": os.environ.get("PATH", "")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------------------------
# The pins


def test_comfyui_and_node_packs_are_pinned_to_the_tested_set():
    packs = tomllib.loads(PACKS.read_text())["packs"]
    assert list(packs)[:len(TESTED_SET)] == list(TESTED_SET), "ComfyUI first, then the SteadyDancer set"
    comfyui_dir = reference()["COMFYUI_DIR"]
    for name, (url, tested) in TESTED_SET.items():
        assert packs[name]["repo"] == url
        assert packs[name]["commit"].startswith(tested), f"{name} is not the tested commit"
    for name, pack in packs.items():
        assert SHA.match(pack["commit"]), f"{name}: pin the full commit"
        expected = comfyui_dir if name == "ComfyUI" else f"{comfyui_dir}/custom_nodes/{name}"
        assert pack["folder"] == expected, "ComfyUI must be where the supervisor looks (COMFYUI_DIR)"
    assert tuple(packs["ComfyUI-WanVideoWrapper"]["large_files"]) == TOKENIZER_FILES


def test_labels_record_every_commit(tmp_path):
    result = installer("labels", str(PACKS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    packs = tomllib.loads(PACKS.read_text())["packs"]
    labels = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert sorted(labels.values()) == sorted(p["commit"] for p in packs.values())
    assert labels["io.comfyui.commit"] == packs["ComfyUI"]["commit"]
    assert labels["io.comfyui.wanvideowrapper.commit"] == packs["ComfyUI-WanVideoWrapper"]["commit"]
    assert labels["io.comfyui.videohelpersuite.commit"] == packs["ComfyUI-VideoHelperSuite"]["commit"]
    assert all(re.fullmatch(r"io\.comfyui(\.[a-z0-9.-]+)?\.commit", key) for key in labels)


@pytest.mark.parametrize(("change", "message"), [
    (('commit = "a125cd84b054a57729b5eecab930ca9408719832"', 'commit = "a125cd84"'), "40-character"),
    (('folder = "/opt/ComfyUI/custom_nodes/ComfyUI-KJNodes"', 'folder = "custom_nodes/ComfyUI-KJNodes"'),
     "absolute path ending in /ComfyUI-KJNodes"),
    (('folder = "/opt/ComfyUI/custom_nodes/ComfyUI-KJNodes"', 'folder = "/srv/ComfyUI-KJNodes"'), "is not inside"),
    (('requirements = ["requirements.txt"]\n\n[packs.ComfyUI-VideoHelperSuite]',
      'requirements = ["../x.txt"]\n\n[packs.ComfyUI-VideoHelperSuite]'), "inside the pack's folder"),
    (("[packs.ComfyUI-VideoHelperSuite]\n", "[packs.ComfyUI-VideoHelperSuite]\nbranch = 'main'\n"),
     "unknown keys ['branch']"),
])
def test_a_bad_packs_file_is_a_clear_error(tmp_path, change, message):
    text = PACKS.read_text()
    assert change[0] in text
    bad = tmp_path / "packs.toml"
    bad.write_text(text.replace(change[0], change[1], 1))
    result = installer("labels", str(bad), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr and "install_packs.py: error:" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# clone, run for real


def make_repo(path: Path, commits: list[dict[str, bytes]]) -> list[str]:
    """A repository on `main` with one commit per dict of files; their ids."""
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    ids = []
    for n, files in enumerate(commits):
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        git("add", "-A", cwd=path)
        git("commit", "-q", "-m", f"c{n}", cwd=path)
        ids.append(git("rev-parse", "HEAD", cwd=path))
    return ids


def write_config(tmp_path: Path, packs: dict[str, dict]) -> Path:
    lines = []
    for name, pack in packs.items():
        lines.append(f"[packs.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in pack.items()]
    config = tmp_path / "packs.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture
def upstream(tmp_path) -> dict:
    """`Comfy` (the root) and `Pack` (a node pack with two large files), three commits each; the middle is pinned."""
    comfy = make_repo(tmp_path / "up" / "Comfy", [{"main.py": f"v{n}\n".encode(), "custom_nodes/.keep": b""}
                                                  for n in range(3)])
    pack = make_repo(tmp_path / "up" / "Pack", [{"nodes.py": f"v{n}\n".encode(), "requirements.txt": b"pyyaml\n",
                                                 "tok/a.model": bytes([n + 1]) * (BIG + 10),
                                                 "tok/b.json": bytes([n + 7]) * (BIG + 20)} for n in range(3)])
    root = tmp_path / "opt" / "Comfy"
    config = write_config(tmp_path, {
        "Comfy": {"repo": f"file://{tmp_path}/up/Comfy", "commit": comfy[1], "folder": str(root)},
        "Pack": {"repo": f"file://{tmp_path}/up/Pack", "commit": pack[1], "folder": f"{root}/custom_nodes/Pack",
                 "requirements": ["requirements.txt"], "large_files": ["tok/a.model", "tok/b.json"]},
    })
    return {"config": config, "root": root, "comfy": comfy, "pack": pack, "up": tmp_path / "up"}


def test_clone_from_the_repositories_checks_out_each_pin_on_a_branch_that_can_update(tmp_path, upstream):
    manifest = tmp_path / "installed.json"
    result = installer("clone", str(upstream["config"]), "--manifest", str(manifest), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pack = upstream["root"] / "custom_nodes" / "Pack"
    assert git("rev-parse", "HEAD", cwd=upstream["root"]) == upstream["comfy"][1]
    assert git("rev-parse", "HEAD", cwd=pack) == upstream["pack"][1]
    assert (pack / "nodes.py").read_text() == "v1\n"
    assert "ok Pack/tok/a.model" in result.stdout and "ok Pack/tok/b.json" in result.stdout
    # Full history, on the default branch with its upstream: UPDATE_NODES_ON_START's `git pull` fast-forwards.
    assert git("rev-parse", "--abbrev-ref", "main@{upstream}", cwd=pack) == "origin/main"
    git("pull", "-q", "--ff-only", cwd=pack)
    assert git("rev-parse", "HEAD", cwd=pack) == upstream["pack"][2]
    records = json.loads(manifest.read_text())
    assert [(r["name"], r["source"], r["gaps"]) for r in records] == [("Comfy", "repository", []),
                                                                     ("Pack", "repository", [])]


def test_clone_from_local_sources_points_origin_back_at_the_repository(tmp_path, upstream):
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("Comfy", "Pack"):  # bare mirrors, as a mirroring job keeps them
        subprocess.run(["git", "clone", "-q", "--mirror", str(upstream["up"] / name), str(sources / name)], check=True)
    moved = tmp_path / "moved"
    upstream["up"].rename(moved)  # the repository URLs now fail: everything must come from the sources
    result = installer("clone", str(upstream["config"]), "--sources", str(sources), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pack = upstream["root"] / "custom_nodes" / "Pack"
    assert git("rev-parse", "HEAD", cwd=pack) == upstream["pack"][1]
    assert git("remote", "get-url", "origin", cwd=pack) == f"file://{tmp_path}/up/Pack"
    assert f"from {sources}/Pack" in result.stdout


def test_a_missing_commit_or_one_off_the_default_branch_fails(tmp_path, upstream):
    config = upstream["config"]
    config.write_text(config.read_text().replace(upstream["pack"][1], "0" * 40))
    result = installer("clone", str(config), cwd=tmp_path)
    assert result.returncode == 1 and f"commit {'0' * 40} is not in repository" in result.stderr
    side = upstream["up"] / "Pack"
    git("checkout", "-q", "-b", "side", upstream["pack"][0], cwd=side)
    (side / "nodes.py").write_text("side\n")
    git("commit", "-q", "-am", "side", cwd=side)
    git("checkout", "-q", "main", cwd=side)
    config.write_text(config.read_text().replace("0" * 40, git("rev-parse", "side", cwd=side)))
    shutil.rmtree(upstream["root"])
    result = installer("clone", str(config), cwd=tmp_path)
    assert result.returncode == 1 and "is not on the default branch main" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_large_file_fails_the_build(tmp_path, upstream, damage):
    # The pinned commit itself carries the damage, as a mirror or an LFS pointer would.
    pack = upstream["up"] / "Pack"
    git("checkout", "-q", upstream["pack"][1], cwd=pack)
    target = pack / "tok" / "b.json"
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:300_000])
    git("commit", "-q", "-am", "damage", cwd=pack)
    damaged = git("rev-parse", "HEAD", cwd=pack)
    git("checkout", "-q", "-B", "main", damaged, cwd=pack)
    config = upstream["config"]
    config.write_text(config.read_text().replace(upstream["pack"][1], damaged))
    result = installer("clone", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "Pack/tok/b.json is missing, truncated" in result.stderr


def drop_blob(repo: Path, commit: str, path: str) -> None:
    """Delete one file's object from a repository of loose objects, as mirrors that skip big files do."""
    sha = git("rev-parse", f"{commit}:{path}", cwd=repo)
    (repo / ".git" / "objects" / sha[:2] / sha[2:]).unlink()


def test_a_local_source_without_a_blob_fails_unless_gaps_are_allowed(tmp_path, upstream):
    sources = tmp_path / "sources"
    for name in ("Comfy", "Pack"):  # copies of the upstream repositories (loose objects: one can be removed)
        shutil.copytree(upstream["up"] / name, sources / name)
    pack = sources / "Pack"
    drop_blob(pack, upstream["pack"][1], "tok/a.model")
    strict = installer("clone", str(upstream["config"]), "--sources", str(sources), cwd=tmp_path)
    assert strict.returncode == 1
    assert "lacks 1 file(s)" in strict.stderr and "tok/a.model" in strict.stderr
    assert "ALLOW_SOURCE_GAPS=true" in strict.stderr

    shutil.rmtree(upstream["root"])
    manifest = tmp_path / "installed.json"
    allowed = installer("clone", str(upstream["config"]), "--sources", str(sources), "--allow-source-gaps",
                        "--manifest", str(manifest), cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    checkout = upstream["root"] / "custom_nodes" / "Pack"
    assert git("rev-parse", "HEAD", cwd=checkout) == upstream["pack"][1]
    assert not (checkout / "tok" / "a.model").exists() and (checkout / "nodes.py").read_text() == "v1\n"
    assert "GAP Pack/tok/a.model" in allowed.stdout and "ok Pack/tok/b.json" in allowed.stdout
    records = {r["name"]: r for r in json.loads(manifest.read_text())}
    assert records["Pack"]["gaps"] == ["tok/a.model"] and records["Comfy"]["gaps"] == []


def test_gaps_are_never_allowed_for_a_file_that_is_there_but_wrong(tmp_path, upstream):
    # --allow-source-gaps covers absent blobs only: a truncated large file still fails.
    pack = upstream["up"] / "Pack"
    git("checkout", "-q", upstream["pack"][1], cwd=pack)
    (pack / "tok" / "a.model").write_bytes(b"short")
    git("commit", "-q", "-am", "truncate", cwd=pack)
    git("checkout", "-q", "-B", "main", cwd=pack)
    config = upstream["config"]
    config.write_text(config.read_text().replace(upstream["pack"][1], git("rev-parse", "HEAD", cwd=pack)))
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("Comfy", "Pack"):
        subprocess.run(["git", "clone", "-q", "--mirror", str(upstream["up"] / name), str(sources / name)], check=True)
    result = installer("clone", str(config), "--sources", str(sources), "--allow-source-gaps", cwd=tmp_path)
    assert result.returncode == 1 and "Pack/tok/a.model is missing, truncated (5 bytes)" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# requirements: one pip resolution (run offline against this environment, whose packages satisfy it)


def test_requirements_resolve_once_with_the_constraints_and_pip_check(tmp_path, upstream):
    assert installer("clone", str(upstream["config"]), cwd=tmp_path).returncode == 0
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("pyyaml>=5\n")
    offline = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest>=7\n")
    config = upstream["config"]
    config.write_text(config.read_text() + 'pip = ["hypothesis"]\n')  # the last table is Pack's
    result = installer("requirements", str(config), "--constraints", str(constraints), "--constraints", str(lock),
                       "--extra", "pytest", cwd=tmp_path, env=offline)
    assert result.returncode == 0, result.stderr + result.stdout
    command = next(line for line in result.stdout.splitlines() if line.startswith("+ "))
    assert command.count(" install ") == 1 and f"-c {constraints} -c {lock}" in command
    assert f"-r {upstream['root']}/custom_nodes/Pack/requirements.txt hypothesis pytest" in command
    assert "No broken requirements found" in result.stdout

    constraints.write_text("pyyaml==0.0.1\n")  # a constraint the resolution cannot meet fails the install
    result = installer("requirements", str(upstream["config"]), "--constraints", str(constraints), cwd=tmp_path,
                       env=offline)
    assert result.returncode == 1 and "one resolution" in result.stderr


def test_a_missing_requirements_file_is_named(tmp_path, upstream):
    assert installer("clone", str(upstream["config"]), cwd=tmp_path).returncode == 0
    (upstream["root"] / "custom_nodes" / "Pack" / "requirements.txt").unlink()
    result = installer("requirements", str(upstream["config"]), "--constraints", "/dev/null", cwd=tmp_path)
    assert result.returncode == 1 and "Pack: requirement file" in result.stderr and "does not exist" in result.stderr
