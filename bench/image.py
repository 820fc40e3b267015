"""Build docker/Dockerfile for real on a machine like ours (Debian 12, root, no Docker, no registry, no GitHub), run
the image and check it. One command, from a clean machine:

    python3 bench/image.py                    # tools, base, sources, build, checks, rebuild, compose, results
    python3 bench/image.py --reuse            # skip the build when the image exists (checks only)
    python3 bench/image.py --clean            # remove the images, containers and build cache (keeps tools, base)

Steps: podman 5 in a chroot and an Ubuntu 24.04 base (bench/image_host.py); ComfyUI and the node packs from local
git mirrors (--mirrors, one `<owner>+<name>/repo` per repository) as the `pack-sources` build context; the build
with the real Dockerfile and only build arguments a CI build also accepts (BASE_IMAGE, TORCH_INDEX_URL=PyPI, which
serves the same CUDA 12.8 wheels, and ALLOW_SOURCE_GAPS when a mirror lacks files); then the checks of
bench/image_checks.py. Results: bench/results/image-<date>.json and .txt. Needs root and ~35 GB of free disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image_checks import Checks  # noqa: E402
from image_host import Host, log, require_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BASE = "localhost/ubuntu-noble-minbase:24.04"
IMAGE = "localhost/comfyui-pod-supervisor:local"
PYPI = "https://pypi.org/simple"
# What the build context needs (the Dockerfile's COPY sources): copied for the rebuild probe.
CONTEXT = ["pyproject.toml", "README.md", "supervisor", "config", "workflows", "comfyui_node", "docker", ".dockerignore"]


class DiskPeak:
    """Peak disk use while a step runs, two ways: the growth of the used bytes of the filesystem holding `storage`
    (sampled every 2 s; other users of a shared disk count too, so an upper bound) and the size of the container
    storage itself (`du`, every 30 s, at low priority)."""

    def __init__(self, storage: Path):
        self.storage, self.start = storage, shutil.disk_usage(storage).used
        self.peak = self.peak_storage = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def storage_bytes(self) -> int:
        out = subprocess.run(["nice", "-n", "19", "du", "-sxb", str(self.storage)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0

    def sample(self) -> None:
        last_du = 0.0
        while not self.stopped.wait(2.0):
            self.peak = max(self.peak, shutil.disk_usage(self.storage).used - self.start)
            if time.monotonic() - last_du > 30:
                self.peak_storage = max(self.peak_storage, self.storage_bytes())
                last_du = time.monotonic()

    def __enter__(self) -> DiskPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.peak_storage = max(self.peak_storage, self.storage_bytes())


def find_mirror(mirrors: Path, repo_url: str) -> Path | None:
    owner, name = repo_url.removesuffix(".git").rsplit("/", 2)[-2:]
    exact = mirrors / f"{owner}+{name}" / "repo"
    if exact.is_dir():
        return exact
    forks = sorted(mirrors.glob(f"*+{name}/repo"))  # a fork that holds the same history
    return forks[0] if forks else None


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, capture_output=True, text=True)


def prepare_sources(host: Host, mirrors: Path) -> tuple[Path, list[dict]]:
    """STATE/trixie/srv/sources/<pack>: a copy of each pack's mirror (never inside the repository)."""
    packs = tomllib.loads((REPO / "config" / "packs.toml").read_text())["packs"]
    sources = host.root / "srv" / "sources"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    found = []
    for name, pack in packs.items():
        mirror = find_mirror(mirrors, pack["repo"])
        if mirror is None:
            sys.exit(f"no mirror of {pack['repo']} under {mirrors} (expected {mirrors}/<owner>+<name>/repo)")
        if git("cat-file", "-e", f"{pack['commit']}^{{commit}}", cwd=mirror).returncode != 0:
            sys.exit(f"{mirror} does not hold {name}'s pinned commit {pack['commit']}")
        shutil.copytree(mirror, sources / name, symlinks=True)
        found.append({"pack": name, "mirror": str(mirror), "commit": pack["commit"]})
    return sources, found


def labels() -> list[str]:
    out = subprocess.run([sys.executable, str(REPO / "docker/install_packs.py"), "labels",
                          str(REPO / "config/packs.toml")], check=True, capture_output=True, text=True).stdout
    return [f"--label={line}" for line in out.splitlines()]


def build(host: Host, context: Path, tag: str, sources: Path | None, log_file: Path) -> dict:
    """podman build with the real Dockerfile; seconds, peak disk, and per step: instruction, cached, seconds."""
    pip_dir = host.root / "srv" / "pip"
    pip_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", pip_dir / "ca.crt")
    (pip_dir / "pip.conf").write_text("[global]\ncert = /run/host-pip/ca.crt\n")
    args = ["build", "--network=host", "--format=docker", "--layers", "-f", f"{context}/docker/Dockerfile",
            f"--build-arg=BASE_IMAGE={BASE}", f"--build-arg=TORCH_INDEX_URL={PYPI}",
            # pip inside the build trusts the host's CAs (a TLS-inspecting proxy): a RUN-time mount, not a layer.
            f"--volume={host.inside(pip_dir)}:/run/host-pip:ro",
            f"--volume={host.inside(pip_dir)}/pip.conf:/etc/pip.conf:ro",
            *labels(), f"--tag={tag}"]
    if sources is not None:
        args += [f"--build-context=pack-sources={host.inside(sources)}", "--build-arg=ALLOW_SOURCE_GAPS=true"]
    steps: list[dict] = []
    started = time.monotonic()
    with DiskPeak(host.root / "var/lib/containers/storage") as disk, log_file.open("w") as out:
        process = host.podman_popen(*args, str(context))
        for line in process.stdout:
            out.write(line)
            now = time.monotonic() - started
            if "] STEP " in line and ": " in line:
                if steps:
                    steps[-1]["seconds"] = round(now - steps[-1].pop("at"), 1)
                steps.append({"step": line.split(": ", 1)[1].strip()[:160], "cached": False, "at": now})
            elif line.startswith("--> Using cache") and steps:
                steps[-1]["cached"] = True
        returncode = process.wait()
    seconds = time.monotonic() - started
    if steps and "at" in steps[-1]:
        steps[-1]["seconds"] = round(seconds - steps[-1].pop("at"), 1)
    if returncode != 0:
        sys.exit(f"the build failed ({returncode}); log: {log_file}")
    return {"seconds": round(seconds, 1), "peak_disk_bytes": disk.peak, "peak_storage_bytes": disk.peak_storage,
            "steps": steps, "log": str(log_file)}


def rebuild_after_supervisor_change(host: Host, sources: Path | None, log_dir: Path) -> dict:
    """Copy the build context, change a supervisor file, rebuild: which steps ran again, and how long it took."""
    context = host.root / "srv" / "rebuild-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name in CONTEXT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, context / name)
    touched = context / "supervisor" / "__init__.py"
    touched.write_text(touched.read_text() + f"# rebuild probe {time.time()}\n")
    result = build(host, Path(host.inside(context)), IMAGE + "-rebuild", sources, log_dir / "rebuild.log")
    rerun = [s["step"] for s in result["steps"] if not s["cached"] and not s["step"].startswith("FROM")]
    result["changed_file"] = "supervisor/__init__.py"
    result["steps_run_again"] = rerun
    result["heavy_layers_reused"] = all(not s["step"].startswith("RUN") or s["cached"] for s in result["steps"]
                                        if any(k in s["step"] for k in ("apt-get", "torch==", "install_packs.py",
                                                                        "--quick-test-for-ci", "deps.txt")))
    host.podman("rmi", IMAGE + "-rebuild", check=False)
    shutil.rmtree(context, ignore_errors=True)
    return result


def sizes(host: Host, image: str) -> dict:
    info = json.loads(host.podman("image", "inspect", image).stdout)[0]
    history = json.loads(host.podman("history", "--no-trunc", "--format=json", image).stdout)
    layers = [{"bytes": h.get("size", 0), "created_by": instruction(h.get("CreatedBy") or h.get("createdBy") or "")}
              for h in history if h.get("size", 0) > 0]
    return {"image_bytes": info["Size"], "layers": sorted(layers, key=lambda l: -l["bytes"]),
            "base_bytes": json.loads(host.podman("image", "inspect", BASE).stdout)[0]["Size"]}


CONTENTS = r"""
site=$(echo /opt/venv/lib/python3*/site-packages)
cd "$site/nvidia" && du -sb -- */ | sed 's|/$||; s|^|nvidia |'
cd "$site" && du -sb -- * | sort -rn | head -15 | sed 's|^|package |'
dpkg-query -W -f '${Installed-Size} ${Package}\n' | sort -rn | head -15 | awk '{print "apt", $1 * 1024, $2}'
"""


def contents(host: Host, image: str) -> dict:
    """What takes the space: torch's CUDA wheels, the largest Python packages and Debian packages."""
    out = host.podman("run", "--rm", "--entrypoint", "bash", image, "-c", CONTENTS).stdout
    found: dict[str, dict[str, int]] = {"nvidia": {}, "package": {}, "apt": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "apt":
            found["apt"][rest[1]] = int(rest[0])
        elif kind in found:
            found[kind][rest[1]] = int(rest[0])
    return found


def carry_over(results: dict, host: Host) -> None:
    """--reuse: the build and rebuild figures of the run that built this very image (same id), if recorded."""
    previous = RESULTS / f"image-{results['date']}.json"
    image_id = json.loads(host.podman("image", "inspect", IMAGE).stdout)[0]["Id"]
    results["image_id"] = image_id
    if previous.exists():
        old = json.loads(previous.read_text())
        if old.get("image_id") == image_id:
            results.update({k: old[k] for k in ("build", "rebuild", "sources") if k in old})


def instruction(created_by: str) -> str:
    """A history entry's command without the build arguments podman puts in front (`|7 A=b ... /bin/bash -c`)."""
    _, marker, script = created_by.partition(" -c ")
    return " ".join((script if marker else created_by).split())[:160]


def clean(host: Host) -> None:
    host.podman("rm", "-a", "-f", check=False)
    # A build's working containers, left by an interrupted build (this storage is ours alone).
    subprocess.run(host.pivoted("buildah", "rm", "--all"), env=host.env, capture_output=True)
    for image in (IMAGE, IMAGE + "-rebuild", "localhost/comfyui-pod-supervisor:latest"):
        host.podman("rmi", "-f", image, check=False)
    for _ in range(20):  # the build's intermediate layers, one generation per pass; the base stays
        if not host.podman("image", "prune", "-f", check=False).stdout.strip():
            break
    shutil.rmtree(host.root / "srv" / "sources", ignore_errors=True)
    for scratch in [*(host.root / "var/tmp").glob("buildah*"), *(host.root / "var/tmp").glob("container_images_*")]:
        shutil.rmtree(scratch, ignore_errors=True)  # an interrupted build's temporary files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=Path("/var/lib/comfyui-image"),
                        help="where the tools, the base and the container storage live (not the repository)")
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"),
                        help="git mirrors of ComfyUI and the node packs: <owner>+<name>/repo each")
    parser.add_argument("--from-network", action="store_true",
                        help="clone the packs from their repositories (needs GitHub) instead of the mirrors")
    parser.add_argument("--reuse", action="store_true", help="keep an existing image instead of building")
    parser.add_argument("--skip", action="append", default=[], choices=["rebuild", "compose", "structure"])
    parser.add_argument("--clean", action="store_true", help="remove the images, containers and build cache")
    parser.add_argument("--unmount", action="store_true", help="unmount the tools' chroot and stop")
    args = parser.parse_args()
    require_root()
    host = Host(args.state, [REPO])
    if args.unmount:
        host.unmount()
        return 0
    results: dict = {"date": date.today().isoformat(), "machine": machine(), "steps": {}}
    try:
        results["steps"]["tools_seconds"] = round(host.setup(), 1)
        if args.clean:
            clean(host)
            return 0
        return session(host, args, results)
    finally:
        host.unmount()  # also stops the service; nothing of the host stays mounted inside STATE


def session(host: Host, args: argparse.Namespace, results: dict) -> int:
    results["steps"]["base_seconds"] = round(host.make_base(BASE), 1)
    results["podman"] = host.podman("--version").stdout.strip()
    sources, results["sources"] = (None, "repositories") if args.from_network else prepare_sources(host, args.mirrors)
    log_dir = args.state / "logs"
    log_dir.mkdir(exist_ok=True)
    if not (args.reuse and host.image_exists(IMAGE)):
        host.podman("rmi", "-f", IMAGE, check=False)
        log("building docker/Dockerfile (cold: 10-20 minutes)")
        results["build"] = build(host, REPO, IMAGE, sources, log_dir / "build.log")
    results["size"] = sizes(host, IMAGE)
    results["image_id"] = json.loads(host.podman("image", "inspect", IMAGE).stdout)[0]["Id"]
    if "build" not in results:
        carry_over(results, host)
    measured = contents(host, IMAGE)
    results["site_packages"] = {"nvidia": measured["nvidia"], "largest": measured["package"]}
    results["apt_largest"] = measured["apt"]
    checks = Checks(host, IMAGE, REPO)
    checks.run_container()
    if "structure" not in args.skip:
        checks.structure_tests(args.state / "venv")
    if "compose" not in args.skip:
        checks.compose(args.state / "venv")
    if "rebuild" not in args.skip:
        log("rebuilding after a change to supervisor/")
        results["rebuild"] = rebuild_after_supervisor_change(host, sources, log_dir)
    results["checks"] = checks.results
    write_results(results)
    return 0 if all(c["ok"] for c in checks.results) else 1


def machine() -> dict:
    import os
    import platform
    return {"os": platform.freedesktop_os_release().get("PRETTY_NAME", ""), "cpus": os.cpu_count(),
            "kernel": platform.release()}


def write_results(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"image-{results['date']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    from image_checks import summary
    text = summary(results)
    stem.with_suffix(".txt").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
