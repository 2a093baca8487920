"""``tinyscheduler-wrapper``: supervise one attempt of one task.

The scheduler normally forks the wrapper from its own, already initialised process (see
``scheduler.reconcile.launcher``); this console script is the same supervisor started as a fresh
process, for ``SPAWN_MODE=exec`` and for running an attempt by hand::

    tinyscheduler-wrapper --lease state/running/task_12.json --token TOKEN [--env-file F]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_LEASE_NAME = re.compile(r"task_(?P<id>[A-Za-z0-9_.-]{1,64})\.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinyscheduler-wrapper",
                                     description="Supervise one attempt of one task.")
    parser.add_argument("--lease", required=True, type=Path, help="the task's lease file")
    parser.add_argument("--token", required=True, help="the spawn token to adopt the lease")
    parser.add_argument("--env-file", type=Path, help="the scheduler's env file")
    parser.add_argument("--base-path", type=Path, help="the scheduler's base path override")
    args = parser.parse_args(argv)

    match = _LEASE_NAME.fullmatch(args.lease.name)
    if match is None or match["id"] in (".", ".."):
        parser.error(f"--lease {args.lease}: expected a path ending in task_<id>.json")
    from scheduler.config.settings import load_settings
    from scheduler.errors import ConfigError

    flags = {"BASE_PATH": args.base_path} if args.base_path else {}
    try:
        settings = load_settings(env_file=args.env_file, flags=flags)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.lease.parent.resolve() != settings.running_dir.resolve():
        settings = _with_running_dir(settings, args.lease.parent.resolve())
    return supervise(settings, match["id"], args.token)


def supervise(settings, task_id: str, token: str) -> int:
    """Run one attempt of one task in this process; returns the wrapper's exit code."""
    from wrapper.supervisor import Supervisor

    return Supervisor(settings, task_id, token).run()


def preload() -> None:
    """Import the supervisor and what it needs, so that a forked wrapper has them."""
    import wrapper.supervisor  # noqa: F401
    from wrapper import title

    title.preload()


def _with_running_dir(settings, running_dir: Path):
    from dataclasses import replace

    return replace(settings, running_dir=running_dir)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
