"""Ask the kernel for a short CPU slice, so a woken sidecar answers its app sooner.

On a busy node the local API's slow requests are the ones that found the CPU taken: the request
wakes the event loop while another task (the app, the kubelet, another pod) runs. Linux's EEVDF
scheduler (6.6 and later; settable since 6.12) lets a thread ask for a shorter slice (`sched_runtime`
of `sched_setattr`, which the kernel clamps to 0.1 to 100 ms). Its virtual deadline then comes
sooner, so on waking it can preempt a task running on the default slice (0.7 ms times 1 + log2 of
the CPU count: 1.4 ms on 2 CPUs). It gets no more CPU than before, only sooner and in shorter
pieces, which suits a process that runs a fraction of a millisecond per request. No privilege is
needed; the nice value is kept. Measured with `make bench-api` under two busy loops: see the
README's benchmark section.

Older kernels refuse it (EINVAL) and seccomp profiles may (EPERM): then nothing changes and
`request_short_slice` says why.
"""

from __future__ import annotations

import ctypes
import os
import platform

SLICE_S = 0.0005
"""Default slice asked for, in seconds: above the ~0.15 ms of CPU one local API request takes, so a
request is seldom cut, and below the kernel's default, so a wake-up preempts sooner."""
MIN_SLICE_S, MAX_SLICE_S = 0.0001, 0.1
"""What the kernel accepts (it clamps anything else into this range)."""

_SYSCALL_NUMBERS = {"x86_64": 314, "aarch64": 274}
"""sched_setattr(2) by machine; other architectures are left as they are."""
_SCHED_OTHER = 0


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def request_short_slice(slice_s: float = SLICE_S) -> str | None:
    """Ask for `slice_s` seconds of slice for the calling thread (the event loop's). Returns None
    when the kernel took it, else the reason it did not (nothing is changed then)."""
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        return f"not supported on {platform.machine()}"
    if os.sched_getscheduler(0) != _SCHED_OTHER:
        return "not the normal scheduling policy; left as it is"
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), sched_policy=_SCHED_OTHER,
                      sched_nice=os.getpriority(os.PRIO_PROCESS, 0), sched_runtime=int(slice_s * 1e9))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.byref(attr), 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None
