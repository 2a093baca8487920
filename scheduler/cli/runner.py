"""Running passes for the ``run`` command: lock, registry, one pass or the daemon loop."""

from __future__ import annotations

import json

import click

from scheduler.config.registry import load_registry
from scheduler.errors import EXIT_OK, EXIT_PASS_ERRORS
from scheduler.logs import get_logger, setup_logging
from scheduler.state import pauses as pauses_mod
from scheduler.state import records

log = get_logger("run")


def prepare_state(settings) -> None:
    """Refuse unsafe state directories; create the ones a pass writes to (0700). The rest
    of the configuration is untouched."""
    from scheduler.state.paths import prepare_state_dirs

    prepare_state_dirs(settings)


def build_reconciler(settings, mode: str):
    from scheduler.reconcile.reconciler import Reconciler

    registry = load_registry(settings.agent_control_file, settings.agent_limits,
                             settings.default_agent_limit)
    log.info(f"scheduler starting ({mode})", extra={"fields": {
        "source": settings.task_source, "mode": mode,
        "agents": ",".join(f"{a.name}={a.limit}" for a in registry.agents) or "none",
        "legacy": registry.legacy, "interval_sec": settings.loop_interval_sec,
        "spawn_mode": settings.spawn_mode}})
    for warning in registry.warnings():
        log.warning(warning)
    return Reconciler(settings, registry, mode=mode)


def one_pass(reconciler, *, dry_run: bool, as_json: bool = False, recorder=None):
    settings = reconciler.settings
    the_pauses = pauses_mod.load(settings.pause_file)
    result = reconciler.run_pass(dry_run=dry_run, pauses=the_pauses)
    summary = result.summary
    if not dry_run:
        (recorder or records.write_pass)(settings, summary.to_json())
    level = log.warning if summary.errors else log.info
    level(summary.line(), extra={"fields": {"errors": summary.errors} if summary.errors else {}})
    if dry_run and not as_json:
        from scheduler.reconcile.plan_view import render_plan

        click.echo(render_plan(result.plan, summary))
    if as_json:
        from scheduler.reconcile.plan_view import plan_to_json

        data = {"summary": summary.to_json()}
        if dry_run:
            data["plan"] = plan_to_json(result.plan)
        click.echo(json.dumps(data, indent=2, default=str))
    return summary


def lock_held_message(holder: str) -> str:
    """What ``run --once`` says when it finds the lock held (docs/operations.md quotes it);
    a daemon waits for the lock instead (:func:`wait_for_lock`)."""
    return f"another scheduler is reconciling: {holder}; this pass does nothing (exit 0)"


def describe_env_file(settings) -> str:
    """Which env file the settings came from, and how it was chosen."""
    if settings.env_file is None:
        return ("no env file (defaults and environment; looked for $TINYSCHEDULER_ENV_FILE, "
                "./tinyscheduler.env, ./.env)")
    return f"env file {settings.env_file} ({settings.env_file_how})"


def log_env_file(settings) -> None:
    log.info(f"settings from {describe_env_file(settings)}")


#: How often a daemon waiting for the scheduler lock tries it again (seconds).
LOCK_RETRY_SEC = 1.0
#: How often it logs who holds the lock while it waits (seconds).
LOCK_LOG_SEC = 60.0


def wait_for_lock(lock) -> bool:
    """A daemon started while another scheduler holds the lock waits for it (saying who
    holds it in the log, to stderr and to systemd), rather than exiting: a service that
    exited would stay down once the other scheduler stops. False if SIGTERM/SIGINT came
    first."""
    import signal
    import time

    from scheduler.reconcile import sdnotify

    stopped: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: stopped.append(signum))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        last_said, last_holder = 0.0, ""
        while not stopped:
            if lock.try_acquire():
                log.info("scheduler lock acquired; starting")
                return True
            holder = lock.describe_holder()
            if holder != last_holder or time.monotonic() - last_said >= LOCK_LOG_SEC:
                message = f"another scheduler holds the lock ({holder}); waiting for it"
                log.warning(message)
                click.echo(message, err=True)
                last_said, last_holder = time.monotonic(), holder
            sdnotify.notify(f"READY=1\nWATCHDOG=1\nSTATUS=waiting for the scheduler lock, "
                            f"{holder}")
            deadline = time.monotonic() + LOCK_RETRY_SEC
            while not stopped and time.monotonic() < deadline:
                time.sleep(0.05)
        return False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(settings, *, daemon: bool, dry_run: bool, as_json: bool, reload) -> int:
    if not dry_run:
        prepare_state(settings)
    else:
        from scheduler.state.paths import check_state_paths

        check_state_paths(settings)
    setup_logging(settings.log_level, settings.log_format,
                  None if dry_run else settings.log_dir, settings.log_retention_days)
    log_env_file(settings)
    from scheduler import faults

    if faults.armed():
        log.warning(faults.armed())
    from scheduler.state.lock import SchedulerLock

    lock = SchedulerLock(settings.lock_file, settings.hostname)
    if not dry_run and not lock.try_acquire():  # a dry run only reads: no lock needed
        if not daemon:
            click.echo(lock_held_message(lock.describe_holder()), err=True)
            return EXIT_OK
        if not wait_for_lock(lock):
            return EXIT_OK  # stopped while waiting
    try:
        if daemon:
            from scheduler.reconcile.daemon import Daemon

            recorder = records.BusyRecorder()

            def daemon_pass(reconciler, busy):
                return one_pass(reconciler, dry_run=dry_run, as_json=as_json,
                                recorder=lambda s, summary: recorder.write(s, summary, busy()))

            return Daemon(lambda s: build_reconciler(s, "daemon"), daemon_pass,
                          settings).serve(reload)
        reconciler = build_reconciler(settings, "once")
        try:
            summary = one_pass(reconciler, dry_run=dry_run, as_json=as_json)
        finally:
            reconciler.close()
        return EXIT_PASS_ERRORS if summary.errors else EXIT_OK
    finally:
        lock.release()
