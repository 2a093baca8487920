"""The ``tinyscheduler`` command line. Nothing below this package imports it."""

from scheduler.cli.main import cli, main

__all__ = ["cli", "main"]
