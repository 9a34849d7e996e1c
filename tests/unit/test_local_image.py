"""deploy/local/image.py without building anything: the cache key covers everything the build
reads, and the image is tagged exactly as both charts run it by default."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import image  # noqa: E402

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def copied_sources() -> list[str]:
    """Every source path a COPY from the build context names (not --from= copies)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    sources = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].upper() == "COPY" and not any(p.startswith("--from=") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def test_cache_key_covers_every_file_the_build_copies() -> None:
    keyed = {path.relative_to(ROOT).as_posix() for path in image.build_context_files()}
    sources = copied_sources()
    assert sources, "the Dockerfile copies nothing?"
    for source in sources:
        path = ROOT / source
        files = [path]
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for file in files:
            assert file.relative_to(ROOT).as_posix() in keyed, f"{file} is copied but not in the image's cache key"


def test_cache_key_changes_with_the_recipe(monkeypatch) -> None:
    before = image.image_digest()
    assert image.image_digest() == before, "the key is a pure function of the inputs"
    monkeypatch.setattr(image, "BASE_SOURCES", (*image.BASE_SOURCES, "deb http://example.invalid/debian trixie main"))
    assert image.image_digest() != before, "a different base recipe is a different image"


def test_image_is_tagged_as_both_charts_run_it_by_default() -> None:
    assert image.chart_image_ref() == f"docker.io/library/lease-sidecar:{VERSION}"
    library = yaml.safe_load((ROOT / "charts" / "lease-sidecar" / "values.yaml").read_text())["image"]
    library_chart = yaml.safe_load((ROOT / "charts" / "lease-sidecar" / "Chart.yaml").read_text())
    # containerd names `lease-sidecar:<tag>` docker.io/library/lease-sidecar:<tag>.
    assert library["repository"] == "lease-sidecar" and library["digest"] == ""
    assert (library["tag"] or library_chart["appVersion"]) == VERSION
    assert library["pullPolicy"] in ("IfNotPresent", "Never"), "an imported image must be usable without a pull"
    example = yaml.safe_load((ROOT / "charts" / "lease-sidecar-example" / "values.yaml").read_text())["image"]
    assert (example["repository"], example["tag"]) == ("lease-sidecar", VERSION), "the example app runs on it too"
    assert example["pullPolicy"] in ("IfNotPresent", "Never")
