"""Allows `python -m igcli`."""

from igcli.cli import run

run()
