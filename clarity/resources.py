"""How many CPU cores this process may use, one place for every stage that starts threads or processes.

A notebook kernel of the headless report (:mod:`clarity.pipeline`) may share the machine with
another one: the report tells it its share in the environment, ``CLARITY_CPUS``, and fixes torch's
threads with ``OMP_NUM_THREADS`` (``REPORT_THREADS``). Outside the report nothing is set and a
process uses every core.

Only work whose result does not depend on the number of cores reads :func:`cpus` (N4 fits of
several brains side by side, dask workers of the chunked detector): the numbers of a report depend
on ``REPORT_THREADS`` (torch's floating-point reductions), never on how many notebooks ran at once.
"""

from __future__ import annotations

import functools
import os

__all__ = ["CPUS_ENV", "cpus", "die_with_parent", "limit_heap_arenas", "release_memory"]

#: environment variable with the cores a process may use (set by the report for each kernel)
CPUS_ENV = "CLARITY_CPUS"


def cpus() -> int:
    """Cores this process may use: ``CLARITY_CPUS`` when set (a positive integer), else all of them.

    Raises
    ------
    ValueError
        ``CLARITY_CPUS`` is set but not a positive integer.
    """
    value = os.environ.get(CPUS_ENV, "").strip()
    if not value:
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{CPUS_ENV}={value!r}: the cores this process may use must be a positive integer")
    return n


def die_with_parent() -> None:
    """Make this process end when its parent does (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing).

    The initializer of every worker-process pool of clarity: a report or data build that is killed
    (a preempted cluster job, Ctrl-C) leaves no worker running on, and a notebook kernel whose
    worker ends exits too (ipykernel watches its parent).
    """
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc's ``libc.so.6`` (loaded once), or None off Linux or where it cannot be loaded."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_heap_arenas(n: int) -> bool:
    """Let glibc's malloc keep at most ``n`` heap arenas (``mallopt(M_ARENA_MAX, n)``).

    Worker threads that each allocate and free large arrays (a chunk's blocks) otherwise get an
    arena each, up to 8 per core, and every arena keeps the pages it freed: the process's memory
    then grows with the chunks processed, not with the chunks in flight. Only arenas created after
    the call are limited. Returns False where it is not glibc (nothing done).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(-8, max(1, int(n))))  # -8 = M_ARENA_MAX


def release_memory() -> bool:
    """Hand the heap pages malloc holds free back to the operating system (glibc ``malloc_trim``;
    elsewhere nothing). Returns whether any memory was released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None and hasattr(libc, "malloc_trim") else False
