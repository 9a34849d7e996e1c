"""The example beat's images, built on this machine from Debian packages, for the local node.

    deploy/local/example_images.py build           # every image's tarball (cached), built side by side
    deploy/local/example_images.py load [--address SOCKET]   # build if needed, import into the node
    deploy/local/example_images.py refs            # the references the example chart runs

Three images (examples/beat/, see docs/beat-example.md):
  lease-sidecar-postgres   Debian's postgresql-17 on debian:trixie-slim
  lease-sidecar-redis      Debian's redis-server, the Celery variant's broker
  lease-sidecar-beat       the example beat app: Debian's python3 with python3-apscheduler,
                           python3-psycopg, python3-celery, python3-redis, and lease-sidecar-client
                           installed from the wheel of client/ (built here, offline)

They start FROM the same `debian:trixie-slim` that deploy/local/image.py reproduces with mmdebstrap
(`image.import_base`) and are built with the same daemonless buildah (runc, host networking, no
pull). No RUN step needs PyPI: the Python packages come from Debian's archive and the client from
its wheel, so no CA bundle or pip config is mounted. Tarballs are cached under
`$LOCAL_CLUSTER_CACHE/images`, keyed by a hash of everything the build reads. The builds run in
parallel threads (buildah's storage is locked per operation), and `start_builds()` starts them in
the background so a test session can build while its node starts. Stdlib only.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import image

ROOT = image.ROOT
EXAMPLE_DIR = ROOT / "examples" / "beat"
CLIENT_DIR = ROOT / "client"
KEPT_TARBALLS_PER_IMAGE = 2


@dataclass(frozen=True)
class ExampleImage:
    name: str  # the repository: containerd names it docker.io/library/<name>:<tag>
    context: Path  # the directory holding its Dockerfile and what it copies
    needs_client_wheel: bool = False  # the app: the wheel of client/ goes into <context>/wheels/

    @property
    def ref(self) -> str:
        return f"docker.io/library/{self.name}:{image.chart_image_ref().rsplit(':', 1)[1]}"

    def inputs(self) -> list[Path]:
        files = [p for p in sorted(self.context.rglob("*")) if p.is_file() and _is_source(p)
                 and "wheels" not in p.relative_to(self.context).parts]
        if self.needs_client_wheel:
            files += [p for p in sorted(CLIENT_DIR.rglob("*")) if p.is_file() and _is_source(p)
                      and "tests" not in p.relative_to(CLIENT_DIR).parts]
        return files

    def digest(self) -> str:
        digest = hashlib.sha256(image.base_digest().encode())
        digest.update(self.ref.encode())
        for path in self.inputs():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def tarball_prefix(self) -> str:
        # Not "lease-sidecar-...": image.py prunes that pattern, keeping only its own newest few.
        return f"example-{self.name.removeprefix('lease-sidecar-')}"

    def tarball_path(self) -> Path:
        return image.IMAGES_DIR / f"{self.tarball_prefix}-{self.digest()}.tar"


def _is_source(path: Path) -> bool:
    ignored = ("__pycache__", ".pytest_cache", "build", "dist", ".ruff_cache")
    return not any(part in ignored or part.endswith(".egg-info") for part in path.parts) and path.suffix != ".pyc"


POSTGRES = ExampleImage("lease-sidecar-postgres", EXAMPLE_DIR / "postgres")
REDIS = ExampleImage("lease-sidecar-redis", EXAMPLE_DIR / "redis")
BEAT_APP = ExampleImage("lease-sidecar-beat", EXAMPLE_DIR / "app", needs_client_wheel=True)
IMAGES = (POSTGRES, REDIS, BEAT_APP)

_base_lock = threading.Lock()


def _client_wheel(into: Path) -> Path:
    """The lease-sidecar-client wheel, built from client/ with this interpreter's pip (no build
    isolation: the backend must already be installed, as in the project's venv)."""
    into.mkdir(parents=True, exist_ok=True)
    log = image.IMAGES_DIR / "client-wheel.log"
    python = ROOT / ".venv" / "bin" / "python"
    interpreter = str(python) if python.exists() else sys.executable
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = Path(tempfile.mkdtemp(prefix="client-source-")) / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "tests", ".pytest_cache"))
    image._run([interpreter, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                "--wheel-dir", str(into), str(source)], log, "pip wheel client/ (lease-sidecar-client)")
    shutil.rmtree(source.parent, ignore_errors=True)
    wheels = sorted(into.glob("lease_sidecar_client-*.whl"))
    if not wheels:
        raise image.ImageError(f"pip wheel client/ made no lease_sidecar_client wheel; see {log}")
    return wheels[-1]


def tarball(spec: ExampleImage) -> Path:
    """Build (or take from the cache) one image as a docker-archive tarball tagged `spec.ref`."""
    target = spec.tarball_path()
    if target.exists():
        return target
    with image._locked(target):
        if target.exists():
            return target
        image.ensure_packages({"buildah": "buildah", "runc": "runc"})
        with _base_lock:  # one thread (and, by buildah's label check, one process) imports the base
            image.import_base()
        log = target.with_suffix(".log")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"{spec.name}-context-") as workdir:
            context = Path(workdir) / "context"
            shutil.copytree(spec.context, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels"))
            if spec.needs_client_wheel:
                _client_wheel(context / "wheels")
            image._run(["buildah", "bud", "--runtime", "runc", "--network", "host", "--pull=never", "--layers",
                        "--tag", spec.ref, str(context)], log, f"buildah bud {spec.ref}")
        partial = target.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        image._run(["buildah", "push", spec.ref, f"docker-archive:{partial}:{spec.ref}"],
                   target.with_suffix(".push.log"), f"buildah push {spec.ref} -> {target.name}")
        partial.rename(target)
        image.say(f"{spec.name} built in {time.monotonic() - started:.0f}s")
        _prune(spec, keep=target)
    return target


def _prune(spec: ExampleImage, keep: Path) -> None:
    tarballs = sorted(image.IMAGES_DIR.glob(f"{spec.tarball_prefix}-*.tar"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    for old in [p for p in tarballs if p != keep and ".partial" not in p.name][KEPT_TARBALLS_PER_IMAGE - 1:]:
        old.unlink(missing_ok=True)


def build_all(specs: tuple[ExampleImage, ...] = IMAGES) -> dict[str, Path]:
    """Every image's tarball, the builds side by side; the first failure is raised."""
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix="example-image") as pool:
        futures = {spec.name: pool.submit(tarball, spec) for spec in specs}
        return {name: future.result() for name, future in futures.items()}


_background: Future[dict[str, Path]] | None = None
_background_lock = threading.Lock()


def start_builds(specs: tuple[ExampleImage, ...] = IMAGES) -> Future[dict[str, Path]]:
    """Starts `build_all` in a background thread once per process (later calls get the same
    future): a caller can wait for the node meanwhile and import the tarballs when both are ready."""
    global _background
    with _background_lock:
        if _background is None:
            future: Future[dict[str, Path]] = Future()

            def run() -> None:
                try:
                    future.set_result(build_all(specs))
                except BaseException as error:  # handed to whoever waits for the builds
                    future.set_exception(error)

            threading.Thread(target=run, name="example-images", daemon=True).start()
            _background = future
        return _background


def load(address: str, wait: Callable[[], dict[str, Path]] | None = None) -> dict[str, str]:
    """Builds what is missing (or waits for `wait`, e.g. a started build) and imports every
    tarball into the node's containerd; returns {name: reference}."""
    tarballs = wait() if wait is not None else build_all()
    for spec in IMAGES:
        image.import_into_containerd(tarballs[spec.name], address)
    return {spec.name: spec.ref for spec in IMAGES}


def chart_sets() -> list[str]:
    """`helm --set` assignments naming these images' tags (the chart's defaults name the same
    repositories with the chart's appVersion)."""
    tag = POSTGRES.ref.rsplit(":", 1)[1]
    return [f"beat.image.tag={tag}", f"beat.postgres.image.tag={tag}", f"beat.redis.image.tag={tag}"]


def main(argv: list[str]) -> int:
    return image.run_cli(argv, prog="example_images", description="Build the example beat's images (PostgreSQL, "
                         "Redis, the app) and load them into the local node.",
                         build_help="build (or take from the cache) every tarball; print their paths",
                         build=lambda: [f"{name} {path}" for name, path in build_all().items()],
                         load=lambda address: load(address).values(),
                         refs_command="refs", refs_help="print the references the example chart runs",
                         refs=lambda: [spec.ref for spec in IMAGES])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
