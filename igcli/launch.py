"""The program's entry point (`igcli`, `python -m igcli`). Importing the CLI takes about
0.3 s (click, rich, numpy, ONNX Runtime); Ctrl-C or SIGTERM in that time printed a Python
traceback (or ended with 143). Here they end as any interrupt does before work starts: exit
130, one line. Nothing else belongs in this module: it must import nothing heavy."""

from __future__ import annotations

import signal
import sys


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# SIGHUP: the terminal closed or the ssh connection dropped; it ended a run at once, with no
# report and its lock files left behind. It stops a run as SIGTERM does.
STOPS = (signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def main() -> None:
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOPS}
    try:
        from igcli.heap import keep_freed_memory

        keep_freed_memory()  # the command's process only: not a program importing igcli
        from igcli.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted before starting\n")
        sys.exit(130)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run()
