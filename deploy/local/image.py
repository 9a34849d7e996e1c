"""The lease-sidecar image, built on this machine from the project's Dockerfile, for the local node.

    deploy/local/image build             # base + image tarballs (cached), prints the image tarball
    deploy/local/image load [--address SOCKET]   # build if needed, import into the node's containerd

No image registry is reachable here, so the Dockerfile's base, `debian:trixie-slim`, is
reproduced from Debian packages: `mmdebstrap --variant=minbase` of trixie from the same mirror,
slimmed the way Debian's official image is (no docs, man pages or locales; apt cleans after
itself), and tagged `docker.io/library/debian:trixie-slim` in buildah's local storage. The
Dockerfile then installs Debian's python3 on it exactly as a `docker build .` does elsewhere, so
the image the node tests run is the recipe users build.

buildah runs daemonless with runc (crun refuses this machine's hybrid cgroups) and host
networking (its default CNI networking would leave a bridge and iptables chains in the host's
namespace). pip inside RUN reaches PyPI through this machine's TLS interception, so the host's CA
bundle and a pip config naming it are bind-mounted into each RUN step; neither is baked into the
image.

Tarballs are cached under `$LOCAL_CLUSTER_CACHE/images` (default `~/.cache/lease-sidecar`),
keyed by a hash of their inputs (the base recipe; the Dockerfile and the build context its
.dockerignore allows), so a warm run only imports. Stdlib only, like localcluster.py.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("LOCAL_CLUSTER_CACHE", Path.home() / ".cache" / "lease-sidecar"))
IMAGES_DIR = CACHE_DIR / "images"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Where RUN steps see it: not Debian's own path, which the ca-certificates package rewrites.
BUILD_CA_BUNDLE = "/tmp/host-ca-certificates.crt"

# The base: what `FROM debian:trixie-slim` means in the Dockerfile.
BASE_REF = "docker.io/library/debian:trixie-slim"
BASE_SUITE = "trixie"
BASE_SOURCES = (
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian trixie-updates main",
    "deb http://deb.debian.org/debian-security trixie-security main",
)
# Debian's slim images drop documentation, manuals and translations at dpkg level; these options
# stay in the image (/etc/dpkg/dpkg.cfg.d), so later apt-get installs stay slim too.
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# ... and apt keeps no package files, no translations and no suggested packages.
BASE_APT_OPTIONS = (
    'APT::Install-Suggests "false"',
    'Acquire::Languages "none"',
    'Acquire::GzipIndexes "true"',
    'Acquire::CompressionTypes::Order:: "gz"',
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; }',
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; }',
    'Dir::Cache::pkgcache ""',
    'Dir::Cache::srcpkgcache ""',
)
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
BASE_CMD = '["bash"]'
# Labels the imported base so a changed recipe is re-imported into buildah's storage.
BASE_RECIPE_LABEL = "io.lease-sidecar.base-recipe"

# The Dockerfile's stage that the runtime stage is FROM (Debian plus python3).
RUNTIME_BASE_STAGE = "python"
BUILD_TIMEOUT_S = 3600.0  # a cold mmdebstrap + pip install on 2 busy cores takes minutes
CTR_TIMEOUT_S = 600.0
CTR_ATTEMPTS = 3
KEPT_IMAGE_TARBALLS = 3  # other checkouts or sessions may still import a recent one
CTR_RETRY_S = 10.0


class ImageError(Exception):
    """A failure worth one line to the user (no traceback)."""


def say(message: str) -> None:
    print(f"[local-image] {message}", file=sys.stderr, flush=True)


def chart_image_ref() -> str:
    """What the charts run by default: repository `lease-sidecar`, tag = appVersion = the
    package version, which containerd names `docker.io/library/lease-sidecar:<version>`."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"docker.io/library/lease-sidecar:{version}"


# ---------------------------------------------------------------- tools


def ensure_packages(commands: dict[str, str]) -> None:
    """apt-get install the Debian package of each missing command ({command: package})."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise ImageError(f"missing {', '.join(missing)} and no apt-get to install them")
    say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for argv in (["apt-get", "update", "-qq"], install):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise ImageError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()[-500:]}")


def _run(argv: list[str], log_path: Path, what: str, timeout_s: float = BUILD_TIMEOUT_S) -> None:
    """Run a long step with its output in `log_path`, saying how long it took."""
    started = time.monotonic()
    say(f"{what} (log: {log_path})")
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        try:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ImageError(f"{what}: timed out after {timeout_s:.0f}s; see {log_path}") from None
    if result.returncode != 0:
        raise ImageError(f"{what}: exit {result.returncode}; see {log_path}")
    say(f"{what}: done in {time.monotonic() - started:.0f}s")


def _locked(path: Path):
    """An exclusive lock next to a cached artefact: concurrent callers build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


# ---------------------------------------------------------------- the base


def base_recipe() -> dict[str, object]:
    return {
        "suite": BASE_SUITE,
        "sources": BASE_SOURCES,
        "dpkg": BASE_DPKG_OPTIONS,
        "apt": BASE_APT_OPTIONS,
        "env": BASE_ENV,
        "cmd": BASE_CMD,
    }


def base_digest() -> str:
    return hashlib.sha256(json.dumps(base_recipe(), sort_keys=True).encode()).hexdigest()[:16]


def base_tarball() -> Path:
    """The trixie minbase root filesystem as a tar, from mmdebstrap (cached)."""
    target = IMAGES_DIR / f"debian-{BASE_SUITE}-slim-{base_digest()}.tar"
    if target.exists():
        return target
    with _locked(target):
        if target.exists():
            return target
        ensure_packages({"mmdebstrap": "mmdebstrap"})
        partial = target.with_suffix(".partial.tar")
        argv = ["mmdebstrap", "--variant=minbase", "--format=tar", "--skip=output/dev"]
        argv += [f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS]
        argv += [f"--aptopt={option}" for option in BASE_APT_OPTIONS]
        # The archive indexes are fetched again by any later apt-get update.
        argv += ["--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*"]
        argv += [BASE_SUITE, str(partial), *BASE_SOURCES]
        _run(argv, target.with_suffix(".log"), f"mmdebstrap {BASE_SUITE} minbase -> {target.name}")
        partial.rename(target)
    return target


def _buildah_label(image: str, label: str) -> str | None:
    result = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        return None
    return (json.loads(result.stdout)["OCIv1"]["config"].get("Labels") or {}).get(label)


def import_base() -> None:
    """Tag the mmdebstrap root filesystem as debian:trixie-slim in buildah's storage."""
    digest = base_digest()
    if _buildah_label(BASE_REF, BASE_RECIPE_LABEL) == digest:
        return
    rootfs = base_tarball()
    log = IMAGES_DIR / "base-import.log"
    name = f"lease-sidecar-base-{os.getpid()}"
    _run(["buildah", "from", "--name", name, "scratch"], log, "buildah: a scratch container")
    try:
        _run(["buildah", "add", name, str(rootfs), "/"], log, f"buildah: unpack {rootfs.name}")
        config = ["buildah", "config", "--cmd", BASE_CMD, "--label", f"{BASE_RECIPE_LABEL}={digest}"]
        for variable in BASE_ENV:
            config += ["--env", variable]
        _run([*config, name], log, "buildah: configure the base")
        _run(["buildah", "commit", "--rm", name, BASE_REF], log, f"buildah: commit {BASE_REF}")
    except ImageError:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)
        raise


# ---------------------------------------------------------------- the image


def build_context_files() -> list[Path]:
    """The files a `docker build .` sends: .dockerignore here is an allow-list (`*`, then `!path`)."""
    allowed = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            allowed.append(ROOT / line[1:].rstrip("/"))
    files = []
    for path in allowed:
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [f for f in candidates if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    return files


def image_digest() -> str:
    digest = hashlib.sha256(base_digest().encode())
    digest.update(chart_image_ref().encode())
    for path in [ROOT / "Dockerfile", ROOT / ".dockerignore", *build_context_files()]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pip_config() -> Path:
    """A pip config for RUN steps: the host's index settings, and the host CA bundle (mounted at
    BUILD_CA_BUNDLE) so TLS through this machine's interception verifies."""
    settings: dict[str, str] = {}
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60)
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.split(".", 1)[-1]
        if option in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"):
            settings[option] = value.strip().strip("'\"")
    for variable, option in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                             ("PIP_TRUSTED_HOST", "trusted-host"), ("PIP_DEFAULT_TIMEOUT", "timeout")):
        if os.environ.get(variable):
            settings[option] = os.environ[variable]
    settings["cert"] = BUILD_CA_BUNDLE
    path = IMAGES_DIR / "pip.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(settings.items())))
    return path


def image_tarball() -> Path:
    """The image built from the Dockerfile, as a docker-archive tarball tagged with the charts'
    default reference (cached by the hash of everything the build reads)."""
    ref = chart_image_ref()
    target = IMAGES_DIR / f"lease-sidecar-{image_digest()}.tar"
    if target.exists():
        return target
    with _locked(target):
        if target.exists():
            return target
        ensure_packages({"buildah": "buildah", "runc": "runc"})
        import_base()
        mounts = []
        if HOST_CA_BUNDLE.exists():
            mounts = ["--volume", f"{HOST_CA_BUNDLE}:{BUILD_CA_BUNDLE}:ro",
                      "--volume", f"{pip_config()}:/etc/pip.conf:ro"]
        version = ref.rsplit(":", 1)[1]
        bud = ["buildah", "bud", "--runtime", "runc", "--network", "host", "--pull=never", "--layers",
               "--build-arg", f"VERSION={version}", "--file", str(ROOT / "Dockerfile")]
        log = target.with_suffix(".log")
        started = time.monotonic()
        # buildah leaves an empty file where it bind-mounted one. The stage the runtime image
        # starts from is therefore built first without the mounts (it needs no pip), and the
        # full build takes it from the layer cache: the mounts' traces stay in the builder stage,
        # of which only the virtual environment is copied.
        _run([*bud, "--target", RUNTIME_BASE_STAGE, str(ROOT)], log, f"buildah bud --target {RUNTIME_BASE_STAGE}")
        _run([*bud, *mounts, "--tag", ref, str(ROOT)], log, f"buildah bud {ref}")
        partial = target.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        _run(["buildah", "push", ref, f"docker-archive:{partial}:{ref}"], target.with_suffix(".push.log"),
             f"buildah push {ref} -> {target.name}")
        partial.rename(target)
        say(f"image built in {time.monotonic() - started:.0f}s")
        prune_image_tarballs(keep=target)
    return target


def prune_image_tarballs(keep: Path) -> None:
    """Every source edit makes a new tarball (about 200 MB): keep only the newest few."""
    tarballs = sorted(IMAGES_DIR.glob("lease-sidecar-*.tar"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in [path for path in tarballs if path != keep][KEPT_IMAGE_TARBALLS - 1:]:
        if ".partial" not in old.name:
            old.unlink(missing_ok=True)


def image_config_digest(tarball: Path) -> str:
    """The image ID (config digest) inside a docker-archive: what the node must end up running."""
    with tarfile.open(tarball) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    return "sha256:" + manifest[0]["Config"].removesuffix(".json").rsplit("/", 1)[-1]


# ---------------------------------------------------------------- the node


def import_into_containerd(tarball: Path, address: str) -> None:
    """`ctr -n k8s.io images import`: the kubelet's namespace, unpacked for its snapshotter, so a
    pod with `imagePullPolicy: IfNotPresent` (the charts' default) starts without a registry."""
    ensure_packages({"ctr": "containerd"})
    argv = ["ctr", "--address", address, "--namespace", "k8s.io", "images", "import", str(tarball)]
    log = IMAGES_DIR / "ctr-import.log"
    # A node being restarted (another session's `up --node`) drops the connection mid-import:
    # try again a few times before failing.
    for attempt in range(1, CTR_ATTEMPTS + 1):
        try:
            _run(argv, log, f"ctr import {tarball.name} into {address}", CTR_TIMEOUT_S)
            return
        except ImageError:
            if attempt == CTR_ATTEMPTS:
                raise
            say(f"ctr import failed (attempt {attempt} of {CTR_ATTEMPTS}); retrying in {CTR_RETRY_S:.0f}s")
            time.sleep(CTR_RETRY_S)


def load(address: str) -> str:
    """Build (or take from the cache) and import the image into the node; returns its reference."""
    tarball = image_tarball()
    import_into_containerd(tarball, address)
    return chart_image_ref()


def default_containerd_address() -> str:
    """The local node's containerd socket (`deploy/local/cluster up --node`, node.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import localcluster  # only when loading into a node
    import node

    return str(node.NodePaths(localcluster.Paths()).containerd_socket)


def run_cli(argv: list[str], *, prog: str, description: str, build_help: str, build: Callable[[], Iterable[object]],
            load: Callable[[str], Iterable[object]], refs_command: str, refs_help: str,
            refs: Callable[[], Iterable[object]]) -> int:
    """The command line of this script and of example_images.py: `build`, `load [--address]` and
    `refs_command`, each printing the lines its function returns; an ImageError is one line on
    stderr and exit 1."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help=build_help)
    load_parser = sub.add_parser("load", help="build if needed, then import into the node's containerd")
    load_parser.add_argument("--address", default=os.environ.get("CONTAINERD_ADDRESS"),
                             help="containerd socket (default: the local node's)")
    sub.add_parser(refs_command, help=refs_help)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            lines = build()
        elif args.command == "load":
            lines = load(args.address or default_containerd_address())
        else:
            lines = refs()
        for line in lines:
            print(line)
    except ImageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str]) -> int:
    return run_cli(argv, prog="image", description="Build the lease-sidecar image and load it into the local node's "
                   "containerd.",
                   build_help="build (or take from the cache) the image tarball; print its path",
                   build=lambda: [image_tarball()], load=lambda address: [load(address)],
                   refs_command="ref", refs_help="print the image reference the charts run by default",
                   refs=lambda: [chart_image_ref()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
