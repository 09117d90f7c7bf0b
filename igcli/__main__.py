"""Allows `python -m igcli`."""

from igcli.cli import main

main()
