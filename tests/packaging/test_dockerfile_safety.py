"""Two safety lines of the image that nothing else would notice going missing: the host keys that the openssh-server
package generates are deleted in the same step (every container of a public image would otherwise share them), and
the CPU smoke test fails the build when a node pack logs IMPORT FAILED (ComfyUI itself still exits 0 then)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from .files import dockerfile
from .test_dockerfile import bash, run_containing, run_script


@pytest.fixture(scope="module")
def instructions():
    return dockerfile()


def test_the_step_that_installs_sshd_deletes_its_host_keys(instructions):
    install = run_containing(instructions, "openssh-server")
    script = run_script(install)
    assert script.index("rm -f /etc/ssh/ssh_host_*") > script.index("openssh-server"), \
        "the package's host keys must go in the step that creates them (a later step keeps them in a layer)"


@pytest.mark.parametrize("output, fails", [
    ("Import times for custom nodes:\n   0.1 seconds: /opt/ComfyUI/custom_nodes/ComfyUI-KJNodes\n", False),
    ("Import times for custom nodes:\n   0.1 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-KJNodes\n",
     True),
])
def test_the_smoke_test_fails_the_build_when_a_node_pack_fails_to_import(instructions, tmp_path, output, fails):
    # A stand-in `python` prints what ComfyUI prints and exits 0, as ComfyUI does when a node pack fails to import.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nsys.stdout.write(os.environ['SMOKE_OUTPUT'])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = run_script(run_containing(instructions, "--quick-test-for-ci"))
    result = bash(script, instructions, {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                         "SMOKE_OUTPUT": output, "TMPDIR": str(tmp_path)}, tmp_path)
    assert (result.returncode != 0) is fails, result.stdout + result.stderr
    if fails:
        assert "a custom node pack failed to import" in result.stderr
