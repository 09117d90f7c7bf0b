"""Allows `python -m igcli`."""

from igcli.launch import main

main()
