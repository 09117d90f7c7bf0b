"""The program's entry point (`igcli`, `python -m igcli`). Importing the CLI takes about
0.3 s (click, rich, numpy, ONNX Runtime); Ctrl-C or SIGTERM in that time printed a Python
traceback (or ended with 143). Here they end as any interrupt does before work starts: exit
130, one line. Nothing else belongs in this module: it must import nothing heavy."""

from __future__ import annotations

import signal
import sys


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from igcli.heap import keep_freed_memory

        keep_freed_memory()  # the command's process only: not a program importing igcli
        from igcli.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted before starting\n")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    run()
