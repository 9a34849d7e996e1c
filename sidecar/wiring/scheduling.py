"""Ask the kernel for a short CPU slice, so a woken sidecar answers its app sooner.

On a busy node the local API's slow requests are the ones that found the CPU taken: the request
wakes the event loop while another task (the app, the kubelet, another pod) runs. Linux's EEVDF
scheduler lets a thread ask for a shorter slice (since 6.12: `sched_runtime` of `sched_setattr`,
which the kernel clamps to 0.1 to 100 ms). Its virtual deadline then comes sooner, so on waking it
can preempt a task running on the default slice (0.7 ms times 1 + log2 of the CPU count: 1.4 ms
on 2 CPUs). It gets no more CPU than before, only sooner and in shorter pieces, which suits a
process that runs a fraction of a millisecond per request. No privilege is needed; the nice value
is kept. Measured with `make bench-api` under two busy loops: see the README's benchmarks.

Kernels before 6.12 accept the call and ignore the slice, so the slice is read back
(`sched_getattr`) and only a slice the kernel reports counts as taken. Seccomp profiles may refuse
the call (EPERM). Either way nothing changes, and `request_short_slice` says why.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

SLICE_S = 0.0005
"""Default slice asked for, in seconds: above the ~0.15 ms of CPU one local API request takes, so a
request is seldom cut, and below the kernel's default, so a wake-up preempts sooner."""
MIN_SLICE_S, MAX_SLICE_S = 0.0001, 0.1
"""What the kernel accepts (it clamps anything else into this range)."""

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
"""(sched_setattr, sched_getattr) by machine; other architectures are left as they are."""
_SCHED_OTHER = 0
_SCHED_RESET_ON_FORK = 0x40000000  # or'ed into sched_getscheduler's policy
_SCHED_FLAG_RESET_ON_FORK = 0x01


class _SchedAttr(ctypes.Structure):
    """struct sched_attr, first version (48 bytes), which every kernel since 3.14 accepts."""

    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def request_short_slice(slice_s: float = SLICE_S) -> str | None:
    """Ask for `slice_s` seconds of slice for the calling thread (the event loop's). Returns None
    when the kernel took it, else the reason it did not (nothing is changed then)."""
    if sys.platform != "linux":
        return f"not Linux ({sys.platform})"
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return f"not supported on {platform.machine()}"
    set_number, get_number = numbers
    policy = os.sched_getscheduler(0)
    if policy & ~_SCHED_RESET_ON_FORK != _SCHED_OTHER:
        return "not the normal scheduling policy; left as it is"
    wanted_ns = round(slice_s * 1e9)
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), sched_policy=_SCHED_OTHER,
                      sched_flags=_SCHED_FLAG_RESET_ON_FORK if policy & _SCHED_RESET_ON_FORK else 0,
                      sched_nice=os.getpriority(os.PRIO_PROCESS, 0), sched_runtime=wanted_ns)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(set_number), ctypes.c_long(0), ctypes.byref(attr), ctypes.c_uint(0)) != 0:
        return os.strerror(ctypes.get_errno())
    seen = _SchedAttr()
    if libc.syscall(ctypes.c_long(get_number), ctypes.c_long(0), ctypes.byref(seen),
                    ctypes.c_uint(ctypes.sizeof(_SchedAttr)), ctypes.c_uint(0)) != 0:
        return f"cannot read it back: {os.strerror(ctypes.get_errno())}"
    if seen.sched_runtime != wanted_ns:
        return "the kernel keeps its own (custom slices need Linux 6.12 or later)"
    return None
