"""One exception root and a shallow tree; the CLI maps them to exit codes in one place."""

from __future__ import annotations

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_PASS_ERRORS = 1
EXIT_USAGE = 2


class TinySchedulerError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = EXIT_PASS_ERRORS


class ConfigError(TinySchedulerError):
    """A setting, env file or agent control file is invalid."""

    exit_code = EXIT_USAGE


class UnsafePath(ConfigError, OSError):
    """A state path is a symbolic link, a FIFO or another non-regular file, foreign-owned,
    or writable by others: refused, never followed (exit code 2). Also an ``OSError``, so
    code that handles an unreadable file handles this one too."""


class InputError(TinySchedulerError):
    """Bad input from a user: an argument, an import file, an unknown id."""

    exit_code = EXIT_USAGE


class InvalidName(InputError):
    """A task id, agent name or recipe name that may not touch a path or an argv."""


class TaskNotFound(InputError):
    """No task with that id in the task source."""


class InvalidTransition(InputError):
    """A task status change that the state machine does not allow."""


class SourceError(TinySchedulerError):
    """The task source failed: unreachable, an HTTP error, garbage data."""


class SourceUnavailable(SourceError):
    """The source could not be reached or did not answer in time (connection, timeout,
    5xx, a deadline): the whole source is down, not one task. A write that failed this
    way may still have been applied."""


class LeaseError(TinySchedulerError):
    """A lease could not be read or written."""


class AlreadyLeased(LeaseError):
    """Another lease for this task exists: it is running or starting elsewhere."""
