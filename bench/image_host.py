"""The container tools for bench/image.py on a Debian 12 machine without Docker or a registry: podman 5 in a chroot.

Debian 12's podman 4.3 rejects `HEALTHCHECK --start-interval`, cannot resolve `FROM models-${BAKE_MODELS}` and drops
HEALTHCHECK unless `--format docker`; podman 5.4 from Debian 13 (trixie) has none of these limits. It is installed
with mmdebstrap into STATE/trixie (about 300 MB, a minute) and run there with chroot: the host's libraries stay as
they are. The sandbox these machines run in cannot raise resource limits and has hybrid cgroups, hence the
containers.conf below (fixed ulimits, runc, cgroupfs). Base images cannot be pulled either: Ubuntu 24.04 (the
CUDA base's distribution) is made with mmdebstrap and imported.

podman runs in its own mount namespace whose root is STATE/trixie (pivot_root, not chroot: a container started from
a chroot'ed podman gets `podman exec` processes rooted at the host's /). One `podman system service` runs there for
the whole session, and every other call is a client of it (`podman --remote`), so that containers, their network
namespaces and their mounts all belong to that one namespace; builds run beside it in a namespace of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ["podman", "buildah", "runc", "conmon", "netavark", "aardvark-dns", "passt", "uidmap", "fuse-overlayfs",
         "iptables", "nftables", "ca-certificates", "mmdebstrap", "ubuntu-keyring", "debian-archive-keyring"]
DEBIAN = "http://deb.debian.org/debian"
UBUNTU = "http://archive.ubuntu.com/ubuntu"
UBUNTU_SECURITY = "http://security.ubuntu.com/ubuntu"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
# What Ubuntu's own container images leave out (dpkg path excludes), so the base is close to ubuntu:24.04.
UBUNTU_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/groff/*",
                   "/usr/share/lintian/*"]


def log(message: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, text=True, **kwargs)


SOCKET = "/run/podman/podman.sock"
# Enter a private mount namespace rooted at the chroot (the folder is bind-mounted on itself, so it is a mount point).
PIVOT = 'mount --make-rprivate / && cd "$0" && mkdir -p .oldroot && pivot_root . .oldroot && cd / && exec "$@"'


class Host:
    """STATE/trixie with podman, mounted and configured; `podman(...)` runs podman in it."""

    def __init__(self, state: Path, binds: list[Path]):
        self.state = state
        self.root = state / "trixie"
        self.binds = binds  # host folders seen at the same path inside the chroot (the repository)
        self.env = {**os.environ, "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
        self.service: subprocess.Popen | None = None

    # -- setup ----------------------------------------------------------------------------------------------------

    def install(self) -> bool:
        """Install the tools unless they are there. True when something was installed."""
        if (self.root / "usr/bin/podman").exists():
            return False
        if not shutil.which("mmdebstrap"):
            log("installing mmdebstrap (apt)")
            sh("apt-get", "update", "-qq")
            sh("apt-get", "install", "-y", "-qq", "mmdebstrap", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        self.state.mkdir(parents=True, exist_ok=True)
        part = self.root.with_name("trixie.part")
        shutil.rmtree(part, ignore_errors=True)
        log(f"installing podman 5 from Debian 13 into {self.root}")
        sh("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(TOOLS)}", "trixie", str(part), DEBIAN)
        part.rename(self.root)
        return True

    def configure(self) -> None:
        (self.root / "etc/containers/containers.conf").write_text(CONTAINERS_CONF)
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # The host's extra CAs (a TLS-inspecting egress proxy, for one) for the chroot's tools.
        extra = Path("/usr/local/share/ca-certificates")
        if extra.is_dir():
            for cert in extra.glob("*.crt"):
                shutil.copy(cert, self.root / "usr/local/share/ca-certificates" / cert.name)
            self.chroot("update-ca-certificates", stdout=subprocess.DEVNULL)

    def mount(self) -> None:
        """The chroot's / must be a mount point (container storage remounts it), plus /proc, /sys, /dev, the binds."""
        def mounted(path: Path) -> bool:
            return sh("mountpoint", "-q", str(path), check=False).returncode == 0
        if not mounted(self.root):
            sh("mount", "--bind", str(self.root), str(self.root))
        for name, how in (("proc", ["-t", "proc", "proc"]), ("sys", ["--rbind", "/sys"]), ("dev", ["--rbind", "/dev"])):
            if not mounted(self.root / name):
                sh("mount", *how, str(self.root / name))
        for path in self.binds:
            inside = self.root / path.relative_to("/")
            inside.mkdir(parents=True, exist_ok=True)
            if not mounted(inside):
                sh("mount", "--rbind", str(path), str(inside))

    def unmount(self) -> None:
        self.stop_service()
        for path in [*(self.root / p.relative_to("/") for p in self.binds),
                     self.root / "dev", self.root / "sys", self.root / "proc", self.root]:
            sh("umount", "-R", str(path), check=False, stderr=subprocess.DEVNULL)

    def setup(self) -> float:
        started = time.monotonic()
        self.install()
        self.mount()
        self.configure()
        self.start_service()
        return time.monotonic() - started

    # -- running --------------------------------------------------------------------------------------------------

    def chroot(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return sh("chroot", str(self.root), *args, check=check, env=self.env, **kwargs)

    def pivoted(self, *args: str) -> list[str]:
        """argv that runs `args` in a new mount namespace rooted at the chroot."""
        return ["unshare", "--mount", "sh", "-c", PIVOT, str(self.root), *args]

    def podman(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """A podman client call to the session's service."""
        return self.chroot("podman", "--remote", "--url", f"unix://{SOCKET}", *args, check=check, capture_output=True,
                           timeout=timeout)

    def podman_popen(self, *args: str) -> subprocess.Popen:
        """A local podman (a build), output piped."""
        return subprocess.Popen(self.pivoted("podman", *args), env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    def inside(self, path: Path) -> str:
        """The chroot's name for a host path under STATE/trixie."""
        return "/" + str(path.relative_to(self.root))

    def image_exists(self, name: str) -> bool:
        return self.podman("image", "exists", name, check=False).returncode == 0

    def wrapper(self) -> Path:
        """A `podman` executable for host tools (podman-compose): a client of the session's service."""
        bin_dir = self.state / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "podman"
        wrapper.write_text("#!/bin/sh\nexport PODMAN_IGNORE_CGROUPSV1_WARNING=1\n"
                           f'exec chroot {self.root} podman --remote --url unix://{SOCKET} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def start_service(self) -> None:
        socket = self.root / SOCKET.lstrip("/")
        if self.service is not None:
            return
        socket.unlink(missing_ok=True)
        socket.parent.mkdir(parents=True, exist_ok=True)
        self.service = subprocess.Popen(self.pivoted("podman", "system", "service", "--time=0", f"unix://{SOCKET}"),
                                        env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not socket.exists():
            if time.monotonic() > deadline or self.service.poll() is not None:
                raise RuntimeError("podman system service did not open its socket")
            time.sleep(0.2)

    def docker_socket(self) -> str:
        """The service's socket (it speaks the Docker API too), as a DOCKER_HOST value."""
        return f"unix://{self.root / SOCKET.lstrip('/')}"

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(timeout=30)
            self.service = None

    # -- the base image -------------------------------------------------------------------------------------------

    def make_base(self, name: str) -> float:
        """Ubuntu 24.04 minbase (mmdebstrap) imported as `name`, unless it exists. Seconds spent."""
        if self.image_exists(name):
            return 0.0
        started = time.monotonic()
        tar = self.root / "srv/base/noble.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        log(f"making the base {name} with mmdebstrap (Ubuntu 24.04 minbase)")
        components = "main restricted universe multiverse"
        self.chroot("mmdebstrap", "--quiet", "--variant=minbase", "--include=ca-certificates,ubuntu-keyring",
                    "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg",
                    *(f"--dpkgopt=path-exclude={p}" for p in UBUNTU_EXCLUDES),
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "noble", self.inside(tar), f"deb {UBUNTU} noble {components}",
                    f"deb {UBUNTU} noble-updates {components}", f"deb {UBUNTU_SECURITY} noble-security {components}")
        sh(*self.pivoted("podman", "import", "--change", 'CMD ["/bin/bash"]',
                         "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         self.inside(tar), name), env=self.env, stdout=subprocess.DEVNULL)
        tar.unlink()
        return time.monotonic() - started


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/image.py needs root (chroot, mounts, rootful podman)")
