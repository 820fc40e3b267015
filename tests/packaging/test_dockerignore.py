""".dockerignore keeps the build context to what the Dockerfile copies, and lets everything it copies through."""

from __future__ import annotations

import sys

from .files import DOCKERIGNORE, REPO, dockerfile, dockerignore_excludes, dockerignore_rules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def copy_sources() -> list[str]:
    sources = []
    for ins in dockerfile():
        if ins.keyword == "COPY" and "--from" not in ins.args:
            words = ins.args.split()
            sources += [w.rstrip("/") for w in words[:-1] if not w.startswith("--")]
    return sources


def test_everything_the_dockerfile_copies_is_in_the_context():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    sources = copy_sources()
    assert {"pyproject.toml", "supervisor", "config", "workflows"} <= set(sources)
    # pip builds the package from pyproject.toml, which names its readme: it must be there too.
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources
    for source in sources:
        path = REPO / source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        files = [f for f in files if "__pycache__" not in f.parts and not f.name.endswith(".pyc")]
        assert path.is_dir() or path.is_file(), f"COPY {source}: not in the repository"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not dockerignore_excludes(rules, relative), f"{relative} is copied but .dockerignore drops it"


def test_the_rest_stays_out_of_the_context():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in (".git/HEAD", ".venv/bin/python", "tests/plan/test_cli.py", "docker/.env", ".devwork/COMMON.md",
                 "supervisor/__pycache__/cli.cpython-311.pyc", "bench/plan.py", ".hypothesis/x",
                 "comfyui_pod_supervisor.egg-info/PKG-INFO", "models/big.safetensors"):
        assert dockerignore_excludes(rules, path), f"{path} would be sent to the builder"


def test_matcher_follows_dockers_order_rules():
    # Negative control for the matcher: the last matching rule wins, and a directory rule covers its contents.
    rules = dockerignore_rules("*\n!src/\nsrc/secret.txt\n**/*.pyc\n")
    assert not dockerignore_excludes(rules, "src/a/b.py")
    assert dockerignore_excludes(rules, "src/secret.txt")
    assert dockerignore_excludes(rules, "src/a/b.pyc")
    assert dockerignore_excludes(rules, "other/file")
    assert dockerignore_excludes(dockerignore_rules("*\n"), "supervisor/cli.py")
