"""The stand-in Hub speaks the protocol huggingface_hub 2.x expects: real huggingface_hub calls work against it."""

import json
import os
import subprocess
import sys

import httpx
import pytest

from supervisor.fetch.resolve import hub_lib
from tests.fetch.conftest import REPO_ROOT, TOKEN, payload, sha256


def test_head_redirects_lfs_files_to_another_origin_with_the_linked_headers(hub):
    data = payload(300_000)
    hub.add_file("org/repo", "w.safetensors", data)
    hub.add_file("org/repo", "config.json", b"{}")
    hf = hub_lib()
    meta = hf.get_hf_file_metadata(hf.hf_hub_url("org/repo", "w.safetensors", endpoint=hub.url), token=False,
                                   endpoint=hub.url)
    assert meta.etag == sha256(data) and meta.size == len(data) and len(meta.commit_hash) == 40
    assert meta.location.startswith(hub.cdn_url) and not hub.cdn_url.startswith(hub.url)
    small = hf.get_hf_file_metadata(hf.hf_hub_url("org/repo", "config.json", endpoint=hub.url), token=False)
    assert small.size == 2 and small.location.startswith(hub.url) and len(small.etag) == 40
    ranged = httpx.get(meta.location, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(data)}"


def test_errors_carry_the_codes_huggingface_hub_classifies(hub):
    hub.add_file("org/gated", "a.bin", b"x")
    hub.gate("org/gated", TOKEN)
    hf = hub_lib()
    from huggingface_hub import errors

    url = lambda repo, path: hf.hf_hub_url(repo, path, endpoint=hub.url)  # noqa: E731
    with pytest.raises(errors.GatedRepoError):
        hf.get_hf_file_metadata(url("org/gated", "a.bin"), token=False)
    assert hf.get_hf_file_metadata(url("org/gated", "a.bin"), token=TOKEN).size == 1
    with pytest.raises(errors.RepositoryNotFoundError):
        hf.get_hf_file_metadata(url("org/none", "a.bin"), token=False)
    with pytest.raises(errors.RemoteEntryNotFoundError):
        hf.get_hf_file_metadata(url("org/gated", "b.bin"), token=TOKEN)


def test_hf_hub_download_and_snapshot_download_work_against_it(hub, tmp_path):
    data = payload(250_000, seed=3)
    hub.add_file("org/repo", "sub/w.bin", data)
    hub.add_file("org/repo", "readme.md", b"hello")
    code = ("import sys; from huggingface_hub import hf_hub_download, snapshot_download;"
            "print(hf_hub_download('org/repo', 'sub/w.bin', local_dir=sys.argv[1]));"
            "print(snapshot_download('org/repo', local_dir=sys.argv[2]))")
    env = {"PATH": os.environ["PATH"], "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hfhome")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "one"), str(tmp_path / "snap")], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "one/sub/w.bin").read_bytes() == data
    assert (tmp_path / "snap/readme.md").read_bytes() == b"hello"
    tree = [r for r in hub.requests(origin="hub") if "/tree/" in r.path]
    assert tree and tree[0].status == 200


def test_runs_as_a_command_and_prints_its_addresses(tmp_path):
    (tmp_path / "root/org/repo").mkdir(parents=True)
    (tmp_path / "root/org/repo/f.txt").write_bytes(b"abc")
    proc = subprocess.Popen([sys.executable, "-m", "tests.standins.hub", "--root", str(tmp_path / "root")],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        urls = json.loads(proc.stdout.readline())
        assert httpx.get(f"{urls['hub']}/org/repo/resolve/main/f.txt").content == b"abc"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
