"""How much memory a run may use, and how many path points per model call fit in it.

A gradient call holds every activation of the forward pass for the backward pass, so its
memory grows with the rows per call (ResNet-50 at 224x224: about 2.7 GiB at 16 rows, 5.5 GiB
at 64). The default budget is half of the memory this process can have (the smaller of the
machine's available memory and a cgroup limit, as CI runners and containers set); the rows per
call come from measuring what one more row costs, so no default run can exhaust a runner.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

MAX_ROWS = 512  # beyond this a call gains nothing measurable on CPU, only latency
DEFAULT_SHARE = 0.5


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = Path(path).read_text().strip()
        if text and text != "max":
            return int(text)
    return None


def available_memory() -> int:
    """Bytes this process could still use: MemAvailable, capped by a cgroup limit."""
    available = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:  # not Linux: all of physical memory, as far as we can tell
        with contextlib.suppress(ValueError, OSError, AttributeError):
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = available or 4 << 30
    left = _cgroup_left(unread=0)
    if left is not None:
        available = min(available, left + current_rss())
    return available


def memory_to_spare() -> int:
    """Bytes this process could still add before the machine or its cgroup runs out:
    MemAvailable, capped by what the cgroup has left."""
    spare = available_memory()
    left = _cgroup_left(unread=current_rss())
    return spare if left is None else min(spare, left)


def _cgroup_left(unread: int) -> int | None:
    """What this process's cgroup limit leaves unused (None: no limit), its use taken as
    `unread` where memory.current cannot be read."""
    limit = _read_int("/sys/fs/cgroup/memory.max") or _read_int(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    if not limit or limit >= (1 << 60):
        return None
    used = _read_int("/sys/fs/cgroup/memory.current") or unread
    return max(limit - used, 0)


HEADROOM = 0.9


def default_budget() -> int:
    return int(DEFAULT_SHARE * available_memory())


def size_text(n: int) -> str:
    """Bytes as people read them in a message: '1.5 GB', '300 MB'."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def current_rss() -> int:
    """Resident memory of this process now, in bytes (0 where it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return 0


def rows_within(
    budget: int, call: Callable[[int], None], cap: int = MAX_ROWS
) -> tuple[int, int | None]:
    """Rows per call that fit `budget`, measured: (rows, bytes per row or None).

    `call(n)` runs one model call on n rows. ONNX Runtime keeps what a call allocated for the
    next one, so resident memory after a call of 1 row and after a call of 4 rows differ by
    what three more rows cost. Measure before anything larger has run on the session.
    """
    call(1)
    one = current_rss()
    call(4)
    four = current_rss()
    if not one or four <= one:  # unmeasurable here, or too small to see: no limit from it
        return cap, None
    per_row = int((four - one) / 3)
    return rows_for(budget, per_row, one, cap), per_row


def rows_for(budget: int, per_row: int, resident: int, cap: int = MAX_ROWS) -> int:
    """Rows per call that fit `budget` at `per_row` bytes each, `resident` already in use."""
    # a tenth of the budget stays for what the run holds outside the call (path points, the
    # gradients returned, accumulators): measured, ResNet-50 under 1G peaked 3% over without it
    rows = int((HEADROOM * budget - resident) // per_row) + 1
    return max(1, min(cap, rows))


class RowTuner:
    """Rows per call chosen by the throughput the run's own calls measure, below the memory
    cap: a small CNN runs 4x faster per row in calls of 8 rows than of 512 (its activations
    stay in cache), a large one prefers large calls. Sizes are tried in turn on real work
    (no probe is wasted), two calls each, until a size is clearly slower than the best so far."""

    SIZES = (8, 16, 32, 64, 128, 256, 512)

    def __init__(self, cap: int) -> None:
        self.sizes = [s for s in self.SIZES if s < cap] + [cap]
        self.seconds_per_row: dict[int, list[float]] = {}
        self.k = 0
        self.settled: int | None = None

    def next_size(self) -> int:
        return self.settled or self.sizes[self.k]

    def record(self, rows: int, seconds: float) -> None:
        if self.settled is not None or rows != self.sizes[self.k]:
            return  # a partial call tells nothing about its size
        seen = self.seconds_per_row.setdefault(rows, [])
        seen.append(seconds / rows)
        if len(seen) < 2:
            return  # the first call of a size may carry a warm-up
        best = min(min(v) for v in self.seconds_per_row.values())
        if min(seen) > 1.25 * best or self.k + 1 == len(self.sizes):
            self.settled = min(self.seconds_per_row, key=lambda s: min(self.seconds_per_row[s]))
        else:
            self.k += 1
