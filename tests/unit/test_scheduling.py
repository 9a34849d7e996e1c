"""--cpu-slice: validated like every duration, and really taken by the kernel where it can be."""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import pytest

from sidecar.core.config import ConfigError
from sidecar.wiring import scheduling
from sidecar.wiring.settings import build_parser, load_settings

BASE = ["run", "--lease-name", "work", "--namespace", "ns"]


def cpu_slice(*args: str) -> float:
    return load_settings(build_parser().parse_args([*BASE, *args]))[0].cpu_slice


def test_the_default_is_half_a_millisecond_and_0_keeps_the_kernels() -> None:
    assert cpu_slice() == scheduling.SLICE_S == 0.0005
    assert cpu_slice("--cpu-slice", "0") == 0
    assert cpu_slice("--cpu-slice", "2ms") == pytest.approx(0.002)


@pytest.mark.parametrize("value", ["50us", "0.00005", "0.2", "1s", "-1ms", "soon"])
def test_a_slice_the_kernel_would_not_take_is_one_line_naming_the_flag(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        cpu_slice(f"--cpu-slice={value}")
    assert str(error.value).startswith("--cpu-slice: ")
    assert "\n" not in str(error.value)


def slice_seen_by_kernel_ns(tid: int) -> int | None:
    for line in Path(f"/proc/self/task/{tid}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="sched_setattr number unknown")
def test_the_kernel_takes_the_slice_for_the_calling_thread_only() -> None:
    """In a thread of its own, so the test process keeps its slice. On a kernel that refuses (before
    6.12 the call may fail with EINVAL), the reason comes back and nothing changed."""
    seen: dict[str, object] = {}

    def ask() -> None:
        tid = threading.get_native_id()
        seen["before"] = slice_seen_by_kernel_ns(tid)
        seen["refused"] = scheduling.request_short_slice(0.0003)
        seen["after"] = slice_seen_by_kernel_ns(tid)

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    if seen["refused"] is None and seen["after"] is not None:
        assert seen["after"] == 300_000
    else:
        assert seen["refused"], seen
        assert seen["after"] == seen["before"]
    assert slice_seen_by_kernel_ns(threading.get_native_id()) != 300_000
