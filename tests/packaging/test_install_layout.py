"""The image installs the supervisor with `pip install` (not editable): every module and data file it needs at run
time must be part of that install. pyproject.toml lists packages and package data explicitly, so a new
subpackage or data file that is not listed works in a checkout and is missing in the image; these tests catch that."""

from __future__ import annotations

import fnmatch
import sys

from .files import REPO, dockerfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_source(package: str, package_dir: dict[str, str]) -> str:
    """Where setuptools takes a package from (package-dir mapping, else the dotted path)."""
    for prefix in sorted(package_dir, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix):].lstrip(".").replace(".", "/")
            return "/".join(p for p in (package_dir[prefix], rest) if p)
    return package.replace(".", "/")


def test_every_python_package_is_installed():
    config = setuptools_config()
    listed = set(config["packages"])
    found = {init.parent.relative_to(REPO).as_posix().replace("/", ".")
             for init in (REPO / "supervisor").rglob("__init__.py") if "__pycache__" not in init.parts}
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages, or the image lacks them"


def test_every_data_file_is_installed():
    config = setuptools_config()
    package_dir = config.get("package-dir", {})
    data = config.get("package-data", {})
    covered_dirs = set()
    for package, patterns in data.items():
        source = REPO / package_source(package, package_dir)
        assert source.is_dir(), f"{package}: {source} does not exist"
        covered_dirs.add(source.relative_to(REPO).as_posix())
        for file in source.rglob("*"):
            if not file.is_file() or "__pycache__" in file.parts or file.suffix == ".py":
                continue
            relative = file.relative_to(source).as_posix()
            assert any(fnmatch.fnmatchcase(relative, p) for p in patterns), \
                f"{file.relative_to(REPO)} is not matched by package-data {patterns}: the image would lack it"
    # The data folders the image copies for the install (COPY config, COPY workflows) are exactly those packaged.
    copied = {w for ins in dockerfile() if ins.keyword == "COPY" for w in ins.args.split()[:-1]}
    assert {"config", "workflows"} <= copied and {"config", "workflows"} <= covered_dirs


def test_package_source_mapping():
    mapping = {"supervisor.config": "config", "supervisor.workflow_files": "workflows"}
    assert package_source("supervisor.config", mapping) == "config"
    assert package_source("supervisor.workflow_files.ui", mapping) == "workflows/ui"
    assert package_source("supervisor.fetch", mapping) == "supervisor/fetch"
