"""Subcommands of the `mambakit` command, one module each (see cli.py)."""
