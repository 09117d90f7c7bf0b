"""The program's entry point (`igcli`, `python -m igcli`). Importing the CLI takes about
0.3 s (click, rich, numpy, ONNX Runtime); Ctrl-C or SIGTERM in that time printed a Python
traceback (or ended with 143). Here they end as any interrupt does before work starts: exit
130, one line. The rest of start-up's tuning is here too (see load_cli). Nothing else
belongs in this module: it must import nothing heavy."""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# SIGHUP: the terminal closed or the ssh connection dropped; it ended a run at once, with no
# report and its lock files left behind. It stops a run as SIGTERM does.
STOPS = (signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def main() -> None:
    load_cli()()


def load_cli() -> Callable[[], None]:
    """Import the CLI (Ctrl-C in that time: exit 130, one line) and return its `run`.

    While it imports, the model file named on the command line is read on another thread
    (prefetch.py), and the garbage collector rests: its passes over the 45,000 objects the
    imports make took 35-40 ms there, and 40-50 ms more later in a run, walking the same
    objects again. They go into the collector's permanent generation once imported (the
    imports leave 0.25 MB of cycles, which stay)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOPS}
    collecting = gc.isenabled()
    gc.disable()
    try:
        from igcli import prefetch

        prefetch.start(sys.argv[1:])
        from igcli.heap import keep_freed_memory

        keep_freed_memory()  # the command's process only: not a program importing igcli
        from igcli.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted before starting\n")
        sys.exit(130)
    except (MemoryError, ImportError, OSError) as exc:
        # under a small `ulimit -v` a library's shared object cannot be mapped ("failed to map
        # segment from shared object"): a traceback, exit 1. Memory, as the run says it later
        # (exit 2); a broken install says what failed to load.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        memory = isinstance(exc, MemoryError) or "map segment" in reason or "memory" in reason
        what = "memory ran out" if memory else "cannot start"
        sys.stderr.write(f"error: {what} while loading igcli ({reason})\n")
        sys.exit(2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gc.freeze()
        if collecting:
            gc.enable()
    return run
