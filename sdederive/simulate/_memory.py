"""Memory estimates checked before large allocations: refuse with the figure and the limit instead of
letting the machine swap or the kernel's OOM killer end the process."""

from __future__ import annotations

import os

from sdederive.errors import MemoryLimitError

__all__ = ["available_bytes", "check_memory", "fmt_bytes"]

#: share of the available memory one allocation may take (the rest: Python, numba, the OS's cache)
_SHARE = 0.8


def fmt_bytes(n: float) -> str:
    """`n` bytes in the largest binary unit below it (`1.5 GiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:  # closed at once: run() reads it on every call (no ResourceWarning)
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def available_bytes() -> int:
    """Memory this process may still allocate: `SDEDERIVE_MEMORY_LIMIT` (bytes) if set, else the
    system's available memory (`MemAvailable`; `psutil` or `sysconf` elsewhere), capped by a
    cgroup limit where there is one."""
    env = os.environ.get("SDEDERIVE_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except ImportError:
            try:
                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell
                return 2**62
    cg = _cgroup_limit()
    return min(avail, cg) if cg is not None else avail


def check_memory(nbytes: float, what: str, hint: str = "") -> None:
    """Raise `MemoryLimitError` if `nbytes` exceeds 80 % of
    `available_bytes`; the message gives both figures and `what` needs them."""
    limit = available_bytes()
    if nbytes > _SHARE * limit:
        raise MemoryLimitError(
            f"{what} needs about {fmt_bytes(nbytes)} of memory, more than the limit of {fmt_bytes(_SHARE * limit)} "
            f"(80% of the {fmt_bytes(limit)} available)" + (f"; {hint}" if hint else "")
            + " (SDEDERIVE_MEMORY_LIMIT=<bytes> sets the available memory)", nbytes, limit)
