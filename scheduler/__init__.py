"""tinyscheduler: a file-backed lease reconciler that runs AI coding agents on a task backlog."""

__version__ = "0.1.0"
