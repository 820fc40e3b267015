"""README stays true: its configuration reference matches the code, and CI runs the test command it documents."""

import re
from pathlib import Path

from supervisor.plan.catalog import load_catalog
from supervisor.plan.settings import variable_defaults

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| (?:`([^`]*)`|\(empty\)) \|")


def readme_variables() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} documented twice"
            found[match.group(1)] = match.group(2) or ""
    return found


def code_variables() -> dict[str, str]:
    return variable_defaults(load_catalog())


def test_configuration_reference_matches_the_code():
    documented, declared = readme_variables(), code_variables()
    assert sorted(set(declared) - set(documented)) == [], "declared in code but not in README"
    assert sorted(set(documented) - set(declared)) == [], "in README but not read by the code"
    wrong = {name: (documented[name], declared[name]) for name in declared if documented[name] != declared[name]}
    assert wrong == {}, "README default differs from the code (readme, code)"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("Run the tests:", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", quick, re.S).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci], f"{command!r} not run by .ci/run"
