#!/usr/bin/env python3
"""Mutation testing over a fixed list of realistic bugs in the safety-critical code.

Each mutation replaces one exact snippet of one module (it must occur exactly once) in a
scratch copy of the project, then runs the tests that guard that module against the
copy (``PYTHONPATH`` puts it first, for the test process and every scheduler, wrapper
and agent process it starts). A mutation is *killed* when a test fails, and *survives*
when the whole selection passes. The working tree is never modified.

    python scripts/mutate.py            # every mutation
    python scripts/mutate.py --list     # the list, without running anything
    python scripts/mutate.py R1 S1      # only these

Exit status: 0 when every mutation was killed, 1 when some survived, 2 on a usage error
or a snippet that no longer matches (the list needs updating with the code).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("scheduler", "wrapper", "tests", "pyproject.toml")
#: The longest one mutation's test run may take (a hang counts as killed, and is shown).
RUN_TIMEOUT_SEC = 900

LEASES = "scheduler/state/leases.py"
LIVENESS = "scheduler/state/liveness.py"
RECONCILER = "scheduler/reconcile/reconciler.py"
SUPERVISOR = "wrapper/supervisor.py"
PLANNER = "scheduler/reconcile/planner.py"
BOUNDS = "scheduler/bounds.py"
DETACH = "scheduler/reconcile/detach.py"
FORKSERVER = "scheduler/reconcile/forkserver.py"

T_LEASES = ("tests/test_leases.py", "tests/test_lease_edges.py", "tests/test_promises.py",
            "tests/test_wrapper.py", "tests/test_reconciler.py")
T_LIVENESS = ("tests/test_liveness.py", "tests/test_promises.py", "tests/test_reconciler.py",
              "tests/test_wrapper.py")
T_RECONCILER = ("tests/test_promises.py", "tests/test_reconciler.py", "tests/test_wrapper.py",
                "tests/test_crash.py")
T_STRANDED = ("tests/test_hardening.py", "tests/test_promises.py")
T_SUPERVISOR = ("tests/test_wrapper.py", "tests/test_promises.py", "tests/test_reconciler.py")
T_PLANNER = ("tests/test_planner.py", "tests/test_properties.py", "tests/test_reconciler.py")
T_SETTINGS = ("tests/test_settings.py", "tests/test_properties.py", "tests/test_config_cli.py")
T_WARM = ("tests/test_forkserver.py", "tests/test_daemon.py")


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str
    old: str
    new: str
    what: str
    tests: tuple[str, ...]


MUTATIONS: tuple[Mutation, ...] = (
    # --- the lease store -------------------------------------------------------------------
    Mutation("L1", LEASES,
             "current.pid,\n                                   current.heartbeat) != (\n"
             "                    expected.spawn_token, expected.state, expected.pid, "
             "expected.heartbeat)",
             "current.pid) != (\n"
             "                    expected.spawn_token, expected.state, expected.pid)",
             "the fence (reown) ignores a heartbeat since the judgement", T_LEASES),
    Mutation("L2", LEASES,
             "(current.spawn_token, current.state, current.pid,\n"
             "                                   current.heartbeat) != (\n"
             "                    expected.spawn_token, expected.state, expected.pid, "
             "expected.heartbeat)",
             "current.spawn_token != expected.spawn_token",
             "the fence ignores an adoption since the judgement", T_LEASES),
    Mutation("L3", LEASES,
             "            if current is None or not token or current.spawn_token != token:\n"
             "                return None\n            updated",
             "            if current is None:\n                return None\n            updated",
             "a heartbeat is not fenced by the spawn token", T_LEASES),
    Mutation("L4", LEASES,
             "            if current is None or not token or current.spawn_token != token:\n"
             "                return None\n            return current",
             "            if current is None:\n"
             "                return None\n            return current",
             "delete is not a compare-and-delete", T_LEASES),
    Mutation("L10", LEASES, "if _names_file(path, fd):", "if True:",
             "a compare-and-set commits over a lease that changed since it was read",
             T_LEASES),
    Mutation("L5", LEASES, "os.link(tmp, final)", "os.replace(tmp, final)",
             "creating a lease overwrites an existing one", T_LEASES),
    Mutation("L6", LEASES, "and lease.state == STARTING\n", "\n",
             "a lease already running can be adopted again", T_LEASES),
    Mutation("L7", LEASES,
             "        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):\n"
             "            return True",
             "        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):\n"
             "            return False",
             "a held liveness lock probes as free", T_LEASES),
    Mutation("L8", LEASES, 'values["attempt"] = _int(data, "attempt", 1, minimum=1)',
             'values["attempt"] = _int(data, "attempt", 1, minimum=0)',
             "a lease with attempt 0 decodes", T_LEASES),
    Mutation("L9", LEASES,
             "            if not _adoptable(current, token) or time.monotonic() > deadline:",
             "            if time.monotonic() > deadline:",
             "adoption keeps waiting for a lock whose lease is gone", T_LEASES),
    # --- liveness ----------------------------------------------------------------------------
    Mutation("V1", LIVENESS,
             "if age > timedelta(seconds=spawn_timeout_sec) and not "
             "probe.lock_held(lease.task_id):",
             "if age > timedelta(seconds=spawn_timeout_sec):",
             "a starting lease is reclaimed under a live wrapper", T_LIVENESS),
    Mutation("V2", LIVENESS, "if age > timedelta(seconds=spawn_timeout_sec)",
             "if age >= timedelta(seconds=spawn_timeout_sec)",
             "the spawn timeout is not strict", T_LIVENESS),
    Mutation("V3", LIVENESS, "    if lease.host != this_host:\n",
             "    if lease.host != this_host and False:\n",
             "another host's lease is judged by this host's lock and pids", T_LIVENESS),
    Mutation("V4", LIVENESS,
             "                or abs(started - lease.pid_started_at) > START_TIME_TOLERANCE):",
             "                or False):",
             "a reused pid is taken for the wrapper", T_LIVENESS),
    Mutation("V5", LIVENESS,
             "max_runtime_sec + kill_grace_sec + lease.heartbeat_sec",
             "max_runtime_sec + lease.heartbeat_sec",
             "the watchdog leaves the wrapper no time to kill and report", T_LIVENESS),
    Mutation("V6", LIVENESS, "    if heartbeat_age > stale_after:\n        return HEARTBEAT_STALE",
             "    if heartbeat_age >= stale_after:\n        return HEARTBEAT_STALE",
             "the stale limit is not strict", T_LIVENESS),
    Mutation("V7", LIVENESS, "return reason in (RUNTIME_EXCEEDED, HEARTBEAT_STALE)",
             "return reason in (RUNTIME_EXCEEDED,)",
             "a stale lease of this host is requeued without killing its process", T_LIVENESS),
    Mutation("V8", LIVENESS, "    if abs(created - started_at) > START_TIME_TOLERANCE:",
             "    if False:", "the watchdog signals a pid without checking its identity",
             T_LIVENESS),
    Mutation("V9", LIVENESS, "    send(signal.SIGKILL)\n", "",
             "the watchdog never escalates to SIGKILL", T_LIVENESS),
    Mutation("V10", LIVENESS,
             "            if proc.status() == psutil.STATUS_ZOMBIE:\n                return None",
             "            if False:\n                return None",
             "a zombie counts as a live wrapper", T_LIVENESS),
    # --- the reconciler: outbox and reclaim ------------------------------------------------
    Mutation("R1", RECONCILER,
             "            try:\n                applied = self.source.report(result, self.policy)\n"
             "            except SourceUnavailable as exc:\n",
             "            path.unlink(missing_ok=True)\n"
             "            try:\n                applied = self.source.report(result, self.policy)\n"
             "            except SourceUnavailable as exc:\n",
             "an outbox entry is deleted before its result is reported", T_RECONCILER),
    Mutation("R2", RECONCILER,
             "                summary.errors.append(f\"outbox delivery failed: {exc}\")\n"
             "                break",
             "                summary.errors.append(f\"outbox delivery failed: {exc}\")\n"
             "                continue",
             "delivery hammers a source that is down", T_RECONCILER),
    Mutation("R3", RECONCILER, "            moved = outbox.quarantine(path, why)",
             "            path.unlink()\n            moved = path",
             "an unreadable outbox entry is deleted instead of quarantined", T_RECONCILER),
    Mutation("R4", RECONCILER,
             "            if self.probe.lock_held(lease.task_id):\n"
             "                return \"unkillable\"",
             "            if False:\n                return \"unkillable\"",
             "a task is requeued while something still holds its lock", T_RECONCILER),
    Mutation("R5", RECONCILER, "outcome=NOT_STARTED if never_ran else RECLAIMED",
             "outcome=RECLAIMED", "a spawn that never started costs an attempt", T_RECONCILER),
    Mutation("R6", RECONCILER,
             "outcome=NOT_STARTED if never_ran else RECLAIMED, token=claimed_with",
             "outcome=NOT_STARTED if never_ran else RECLAIMED, token=token",
             "a reclaim reports under the fence token, not the claim's", T_RECONCILER),
    Mutation("R7", RECONCILER,
             "        claimed_with = lease.metadata.get(CLAIM_TOKEN_KEY) or lease.spawn_token",
             "        claimed_with = lease.spawn_token",
             "a second reclaim forgets the token the source was claimed with", T_RECONCILER),
    Mutation("R8", RECONCILER,
             "            if found == (WORKING, lease.agent):",
             "            if found is not None and found[0] == WORKING:",
             "a run is not stopped when its task was reassigned", T_RECONCILER),
    Mutation("R9", RECONCILER,
             "            if found == (WORKING, lease.agent):",
             "            if found is None or found == (WORKING, lease.agent):",
             "a run is not stopped when its task was deleted", T_RECONCILER),
    Mutation("R10", RECONCILER,
             "        except InvalidTransition as exc:\n"
             "            self.store.delete(task.id, token)\n",
             "        except InvalidTransition as exc:\n",
             "a lost claim race leaves its lease behind", T_RECONCILER),
    Mutation("R11", RECONCILER,
             "        except BaseException:\n            self.store.delete(task.id, token)\n",
             "        except BaseException:\n",
             "a failed claim leaves its lease behind", T_RECONCILER),
    Mutation("R12", RECONCILER,
             "                summary.errors.append(f\"task {spawn.task.id}: {exc}\")\n"
             "                break",
             "                summary.errors.append(f\"task {spawn.task.id}: {exc}\")\n"
             "                continue",
             "spawning goes on against a source that is down", T_RECONCILER),
    Mutation("R13", RECONCILER,
             "detail={\"reason\": why}))\n        self.store.delete(task_id, token)",
             "detail={\"reason\": why}))",
             "a launch failure leaves its lease behind", T_RECONCILER),
    Mutation("R14", RECONCILER,
             "            verdicts = {lease.task_id: None for lease in leases}\n",
             "", "leases kept after a failed reclaim are planned as free slots", T_RECONCILER),
    Mutation("R15", RECONCILER,
             "                if outbox.path_for(self.settings.outbox_dir, task.id, token)"
             ".exists():",
             "                if False:",
             "a stranded task whose result waits in the outbox is requeued", T_STRANDED),
    Mutation("R16", RECONCILER,
             "                if task.assignee is None or not is_valid_name(task.assignee):",
             "                if False:",
             "a stranded task with no agent assigned is requeued for nobody", T_STRANDED),
    Mutation("R17", RECONCILER,
             "            except Exception as exc:  # one task never stops the others\n"
             "                summary.errors.append(f\"task {task.id}: requeueing stranded",
             "            except ZeroDivisionError as exc:\n"
             "                summary.errors.append(f\"task {task.id}: requeueing stranded",
             "a stranded task whose requeue fails stops the pass", T_STRANDED),
    # --- the wrapper's supervisor -------------------------------------------------------------
    Mutation("S1", SUPERVISOR, "        if self._beat(state=FINISHING) == BEAT_FENCED:\n"
             "            self._line(\"lease vanished",
             "        if self._beat(state=FINISHING) == BEAT_FENCED and False:\n"
             "            self._line(\"lease vanished",
             "the wrapper ignores its last heartbeat's result before reporting", T_SUPERVISOR),
    Mutation("S2", SUPERVISOR,
             "        self._hold_or_release_agent(lease.agent, result, said)\n"
             "        action = self._record(result)",
             "        self._hold_or_release_agent(lease.agent, result, said)\n"
             "        self.store.delete(self.task_id, self.token)\n"
             "        action = self._record(result)",
             "the lease is dropped before the result is safe", T_SUPERVISOR),
    Mutation("S3", SUPERVISOR, "                    attempt.fenced = True",
             "                    attempt.fenced = False",
             "a wrapper fenced while its agent runs still reports", T_SUPERVISOR),
    Mutation("S4", SUPERVISOR,
             "        if verdict == BEAT_FENCED or self._renew_run() == FENCED:\n"
             "            agent.abort()",
             "        if False:\n            agent.abort()",
             "an agent starts although its lease was re-owned", T_SUPERVISOR),
    Mutation("S5", SUPERVISOR, "            return outbox.write(self.settings.outbox_dir, result)",
             "            return None", "an undeliverable result is dropped", T_SUPERVISOR),
    Mutation("S6", SUPERVISOR, '        env.pop("TINYSCHEDULER_MCP_TOKEN", None)',
             "        pass", "the agent inherits the scheduler's secret", T_SUPERVISOR),
    Mutation("S7", SUPERVISOR,
             "            if self._stop_signal is not None:\n                agent.abort()",
             "            if False:\n                agent.abort()",
             "a signal before the agent starts is ignored", T_SUPERVISOR),
    Mutation("S8", SUPERVISOR, "            if now >= runtime_deadline:",
             "            if False:", "the wrapper never enforces MAX_RUNTIME_SEC", T_SUPERVISOR),
    Mutation("S9", SUPERVISOR,
             "            agent.signal_group(signal.SIGKILL)\n            agent.wait()\n"
             "        self._kill_stragglers(agent)",
             "            agent.wait()\n        self._kill_stragglers(agent)",
             "an agent ignoring SIGTERM is never killed", T_SUPERVISOR),
    Mutation("S10", SUPERVISOR,
             "        if agent.signal_group(signal.SIGKILL):\n            self._line(",
             "        if False:\n            self._line(",
             "processes the agent left behind outlive the attempt", T_SUPERVISOR),
    Mutation("S11", SUPERVISOR, "            if self._signal_r in readable:\n"
             "                _drain(self._signal_r)\n"
             "            if self._stop_signal is not None:\n"
             "                return self._stop(",
             "            if self._signal_r in readable:\n"
             "                _drain(self._signal_r)\n"
             "            if False:\n"
             "                return self._stop(",
             "SIGTERM to the wrapper does not stop the agent", T_SUPERVISOR),
    # --- the planner ------------------------------------------------------------------------
    Mutation("P1", PLANNER, "max(agent.limit - used.get(agent.name, 0), 0)", "agent.limit",
             "live leases do not use up slots", T_PLANNER),
    Mutation("P2", PLANNER, "        if not view.reclaim_reason:\n            used[",
             "        if True:\n            used[", "dead leases keep their slots", T_PLANNER),
    Mutation("P3", PLANNER, "        if task.id in leased:", "        if False:",
             "a leased task is planned again", T_PLANNER),
    Mutation("P4", PLANNER, "        elif task.is_blocked and not disable_blocking:",
             "        elif False:", "blocked tasks are planned", T_PLANNER),
    Mutation("P5", PLANNER, "        elif task.not_before is not None and task.not_before > now:",
             "        elif False:", "retry backoff is ignored", T_PLANNER),
    Mutation("P6", PLANNER, "-counts.get(t.id, 0), -t.priority,",
             "-t.priority, -counts.get(t.id, 0),",
             "priority outranks unblocking other tasks", T_PLANNER),
    Mutation("P7", PLANNER, "    if slots.free[agent.name] <= 0:",
             "    if slots.free[agent.name] < 0:",
             "an assigned task goes over its agent's limit", T_PLANNER),
    Mutation("P8", PLANNER, "    if slots.free[best.name] <= 0:",
             "    if slots.free[best.name] < 0:",
             "a queued task goes over the pool's limits", T_PLANNER),
    Mutation("P9", PLANNER, "(-slots.free[a.name], a.name)", "(slots.free[a.name], a.name)",
             "a queued task goes to the busiest pool member", T_PLANNER),
    Mutation("P10", PLANNER, "        seen.setdefault(task.id, task)",
             "        seen[id(task)] = task",
             "a task listed twice is planned twice", T_PLANNER),
    Mutation("P11", PLANNER, "    if pauses.everything or agent.name in pauses.agents:\n"
             "        return Skip(",
             "    if False:\n        return Skip(", "a paused agent gets assigned work", T_PLANNER),
    # --- warm wrappers -----------------------------------------------------------------------
    Mutation("W1", DETACH, "or _open_descriptors() != {0, 1, 2, *keep}:", ":",
             "a wrapper that still holds a descriptor of its ended task (its liveness "
             "lock) is offered the next task", T_WARM),
    Mutation("W2", DETACH, "    return lease is None or lease.pid != os.getpid()",
             "    return True", "a wrapper whose lease still names it is offered the next task",
             T_WARM),
    Mutation("W3", FORKSERVER, "        self.selector.register(channel, selectors.EVENT_READ)",
             "        pass", "the server never hears a wrapper say it is ready", T_WARM),
    Mutation("W4", FORKSERVER, "        while self.idle and self.idle[0][0] <= idle_before:",
             "        while False:", "idle wrappers are never retired", T_WARM),
    # --- settings ----------------------------------------------------------------------------
    Mutation("C1", BOUNDS, "SPAWN_TIMEOUT_BOUNDS = Bounds(1, 3_600)",
             "SPAWN_TIMEOUT_BOUNDS = Bounds(0, 3_600)", "SPAWN_TIMEOUT_SEC accepts 0", T_SETTINGS),
    Mutation("C2", BOUNDS, "STALE_MULTIPLIER_BOUNDS = Bounds(2, 100)",
             "STALE_MULTIPLIER_BOUNDS = Bounds(1, 100)", "STALE_MULTIPLIER accepts 1", T_SETTINGS),
    Mutation("C3", BOUNDS, "                and self.low <= value <= self.high)",
             "                and self.low - 1 <= value <= self.high)",
             "every whole-number minimum is one lower", T_SETTINGS),
)


def mutate_copy(mutation: Mutation, scratch: Path) -> None:
    target = scratch / mutation.path
    text = target.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.id}: the snippet occurs {count} times in "
                         f"{mutation.path} (expected exactly once); update scripts/mutate.py")
    target.write_text(text.replace(mutation.old, mutation.new))


def run_tests(mutation: Mutation, scratch: Path, workers: int) -> tuple[bool, str, float]:
    """(killed, the first failing test or why, seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")]))
    env.pop("COVERAGE_PROCESS_START", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf",
            "--timeout", "120", *mutation.tests]
    if workers > 1:
        argv += ["-p", "xdist", "-n", str(workers)]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SEC, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return True, f"timed out after {RUN_TIMEOUT_SEC} s", time.monotonic() - started
    seconds = time.monotonic() - started
    if proc.returncode == 0:
        return False, "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    return True, (failed[0] if failed else f"pytest exit {proc.returncode}"), seconds


def copy_project(scratch: Path, origin: Path = ROOT) -> None:
    """A fresh, unmutated copy of the code and the tests (from ``origin``) in ``scratch``."""
    for name in COPIED:
        source, target = origin / name, scratch / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", ".pytest_cache"))
        else:
            shutil.copy2(source, target)


def check_imports(scratch: Path) -> None:
    """The copy must be what the tests import, or every mutant would survive."""
    env = dict(os.environ, PYTHONPATH=str(scratch))
    out = subprocess.run([sys.executable, "-c", "import scheduler, wrapper; "
                          "print(scheduler.__file__); print(wrapper.__file__)"],
                         cwd=scratch, env=env, capture_output=True, text=True, check=True)
    for line in out.stdout.split():
        if not Path(line).resolve().is_relative_to(scratch.resolve()):
            raise SystemExit(f"the scratch copy is not imported first ({line}); "
                             "is the package installed non-editable over PYTHONPATH?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutation ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("-n", "--workers", type=int, default=2,
                        help="pytest-xdist workers per run (default 2; 1 = no xdist)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the first run of the selected tests on unmutated code")
    args = parser.parse_args(argv)
    # stopped from outside: end the test run and remove the scratch copy on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    known = {m.id: m for m in MUTATIONS}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        parser.error(f"unknown mutation id(s) {', '.join(unknown)}; see --list")
    chosen = [known[i] for i in args.ids] if args.ids else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.id:4} {m.path}: {m.what}")
        return 0

    missing = sorted({t for m in chosen for t in m.tests if not (ROOT / t).is_file()})
    if missing:
        print(f"test files not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    survivors: list[Mutation] = []
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-mutate-") as tmp:
        # one snapshot of the tree at the start: edits made while the run goes on do not
        # leak into later mutants
        pristine_tree, scratch = Path(tmp) / "pristine", Path(tmp) / "work"
        copy_project(pristine_tree)
        scratch.mkdir()
        for m in chosen:  # every snippet must match before anything runs
            if (pristine_tree / m.path).read_text().count(m.old) != 1:
                print(f"mutation {m.id}: snippet not found exactly once in {m.path}; "
                      "update scripts/mutate.py", file=sys.stderr)
                return 2
        if args.baseline:  # the unmutated copy must pass, or every mutant looks killed
            copy_project(scratch, pristine_tree)
            check_imports(scratch)
            tests = tuple(sorted({t for m in chosen for t in m.tests}))
            failed, why, seconds = run_tests(Mutation("base", "", "", "", "", tests), scratch,
                                             args.workers)
            if failed:
                print(f"the unmutated tests fail ({why}); fix them first", file=sys.stderr)
                return 2
            print(f"baseline: {len(tests)} test files pass unmutated ({seconds:.0f} s)")
        for m in chosen:
            copy_project(scratch, pristine_tree)
            check_imports(scratch)
            mutate_copy(m, scratch)
            killed, why, seconds = run_tests(m, scratch, args.workers)
            verdict = f"killed by {why}" if killed else "SURVIVED"
            print(f"{m.id:4} {verdict}  ({seconds:.0f} s)  {m.path}: {m.what}", flush=True)
            if not killed:
                survivors.append(m)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutations killed; "
          f"{len(survivors)} survived" + (": " + ", ".join(m.id for m in survivors)
                                          if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
