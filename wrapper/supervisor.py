"""Supervise one attempt: adopt the lease, run the agent, heartbeat, enforce limits, report.

The loop is event-driven and single-threaded: it waits on the agent's pidfd and on a
signal wake-up pipe with a timeout set to the next due event (heartbeat, runtime limit,
idle check), so it costs nothing while it waits and reacts at once when the agent exits.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# psutil is imported here rather than when first used: the fork launcher imports this
# module before it forks a wrapper (wrapper.main.preload), so every forked wrapper starts
# with it loaded instead of importing it per task.
import psutil

from scheduler import clock
from scheduler.agents import options as agent_options
from scheduler.agents import prompt, ratelimit, result_file
from scheduler.agents.result_file import AgentResult
from scheduler.errors import AlreadyLeased, ConfigError, LeaseError, SourceError
from scheduler.fsutil import HeldFiles, ensure_private_dir
from scheduler.logs import append_event
from scheduler.merge import git_merge, landing
from scheduler.sources import base
from scheduler.sources.base import Result, RetryPolicy
from scheduler.state import outbox, records, taskfile, throttles, wake
from scheduler.state.leases import FINISHING, MERGING, Lease, LeaseStore
from scheduler.workspace import limits, modes, sandbox
from scheduler.workspace.base import Context, LowDisk, Workspace, WorkspaceError
from wrapper.agent import AgentProcess
from wrapper.attemptlog import AttemptLog
from wrapper.command import LaunchError, build_argv, resolve_recipe, uses_recipe
from wrapper.judge import judge
from wrapper.title import set_title, wrapper_title

#: At most this much of the agent's output tail goes into the result summary.
SUMMARY_TAIL_BYTES = 2048
SUMMARY_MAX_BYTES = 4096
#: How often output growth is checked for the idle timeout.
IDLE_CHECK_SEC = 1.0
#: The longest one report to the source may take, every call included (seconds).
REPORT_DEADLINE_SEC = 60.0
#: While a result can be neither reported nor written to the outbox (disk full, source
#: down), the wrapper keeps it in memory and retries, waiting at most this long between.
KEEP_RETRY_MAX_SEC = 30.0
#: How long deleting the lease of a recorded result is retried. Giving up is safe: once
#: this wrapper exits its lease is reclaimed, and that report is ignored (already applied).
DELETE_RETRY_SEC = 120.0

#: Verdicts of one heartbeat.
BEAT_OK, BEAT_RETRY, BEAT_FENCED = "ok", "retry", "fenced"

#: :meth:`Supervisor._renew_run` when the run row was taken over by another host.
FENCED = "fenced"


@dataclass
class Attempt:
    """What the loop learned about the agent's end."""

    outcome: str
    exit_code: int | None = None
    signal: int | None = None
    fenced: bool = False
    note: str = ""
    limit: str = ""  #: the resource limit that stopped the agent, e.g. "CPU limit 60 s"


class Supervisor:
    """Runs one attempt of one task. ``run()`` returns the wrapper's exit code."""

    def __init__(self, settings, task_id: str, token: str) -> None:
        self.settings = settings
        self.task_id = task_id
        self.token = token
        self.store = LeaseStore(settings.running_dir)
        self.task_dir = settings.task_log_dir / task_id
        self.log: AttemptLog | None = None
        self._signal_r = self._signal_w = -1
        self._stop_signal: int | None = None
        self._judged_problem = ""
        self.workspace: Workspace | None = None
        self.context: Context | None = None
        self._fenced = False
        self._headed = False
        self._lease: Lease | None = None  #: the lease as this wrapper last wrote it
        self._pending: dict = {}  #: lease fields a failed heartbeat did not record yet
        self._source = None
        self._runs: Any = None  #: the run coordinator (several hosts), opened lazily
        self._renewed_at = time.monotonic()
        self._landed: landing.Landed | None = None
        self._merge_detail: dict = {}
        self._merge_text = ""
        self._merge_park = False
        self._held_files = HeldFiles()  #: removed files held open until the end

    @property
    def _out(self) -> AttemptLog:
        """The attempt log, open from before the agent starts to after it ended."""
        assert self.log is not None
        return self.log

    # --- the whole life ------------------------------------------------------------------

    def run(self) -> int:
        # A pipe or socket closed by its peer is an error to handle, never a silent death
        # (a forked wrapper starts with SIGPIPE at its default action).
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        start_time = _start_time_of(os.getpid())
        adopted = self.store.adopt(self.task_id, self.token, os.getpid(), start_time, clock.now())
        if adopted is None:
            return 0  # someone else owns it, or it was reclaimed: run nothing
        lease, self.liveness = adopted
        set_title(wrapper_title(self.task_id, lease.agent))
        self._lease = lease
        # From here to the end, SIGTERM/SIGINT are noted, not fatal: before the agent runs
        # they cancel the attempt, while it runs they stop it, while the result is being
        # recorded they change nothing (dying there would lose the attempt's outcome).
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._attempt(lease)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.log is not None:
                self.log.close()
                self.log = None
            if self._source is not None:
                self._source.close()
                self._source = None
            if self._runs:
                self._runs.close()

    def _attempt(self, lease) -> int:
        started = time.monotonic()
        log_path = self.task_dir / f"attempt-{lease.attempt}.log"
        try:
            ensure_private_dir(self.task_dir)
            self.log = AttemptLog(log_path, self.settings.attempt_log_max_mb * 1024 * 1024)
        except OSError as exc:  # a link, FIFO or foreign file there: refused, reported
            attempt = Attempt(base.LAUNCH_FAILED, note=f"attempt log unusable: {exc}")
        else:
            try:
                attempt = self._launch_and_wait(lease, log_path)
            except Exception as exc:  # a bug here must still leave a result behind
                attempt = Attempt(base.LAUNCH_FAILED, note=f"wrapper error: {exc!r}")
        if attempt.fenced:
            self._footer(attempt, time.monotonic() - started)
            self._line(f"lease of task {self.task_id} was reclaimed or re-owned: "
                       "agent stopped, nothing reported")
            return 0
        said = self._judge(lease, attempt, log_path)
        if self.context is not None:
            # From here on a stop signal no longer interrupts git or hooks: the attempt
            # has ended, and committing its work is what keeps it.
            self.context.tick = self._keep_alive
        if self.workspace is not None and self.context is not None:
            try:
                modes.end(self.context, self.workspace, attempt.outcome)
            except Exception as exc:  # the outcome stands whatever the cleanup does
                self._line(f"workspace: after the attempt: {exc!r}")
            if self._merges(attempt):
                self._land(lease, attempt)
                if attempt.fenced:
                    self._footer(attempt, time.monotonic() - started)
                    self._line(f"lease of task {self.task_id} was lost during the merge: "
                               "nothing reported")
                    return 0
        duration = time.monotonic() - started
        self._footer(attempt, duration)
        result = self._result(lease, attempt, duration, log_path, said)
        # Fencing is checked here; a lease that cannot be written (a full disk) does not
        # hold the result back: the source applies it only under this attempt's token.
        if self._beat(state=FINISHING) == BEAT_FENCED:
            self._line("lease vanished or was re-owned before reporting: nothing reported")
            return 0
        self._hold_or_release_agent(lease.agent, result, said)
        action = self._record(result)
        if self.workspace is not None and self.context is not None:
            try:
                if self._landed is not None:
                    landing.tidy(self.context, self.workspace, self._landed)
                else:
                    modes.tidy(self.context, self.workspace, attempt.outcome)
            except Exception as exc:
                self._line(f"workspace: cleanup failed: {exc!r}")
        self._free_slot()
        self._record_outcome(result, action)  # counters and the log line: after the slot
        return 0

    def _free_slot(self) -> None:
        """The end: the lease goes, the lock is released, the daemon is woken; only then
        are the files this attempt replaced or removed let go (freeing them is the
        file system's slowest step here, and nothing waits on it now)."""
        self._retry(lambda: self.store.delete(self.task_id, self.token), "deleting the lease",
                    give_up_after=DELETE_RETRY_SEC)
        self.liveness.release()
        wake.nudge(self.settings.wake_socket)
        self.store.close_retired()
        self._held_files.close()

    # --- the lease while the agent runs -------------------------------------------------

    def _beat(self, **changes) -> str:
        """One heartbeat (plus field ``changes``). I/O errors (disk full, read-only) never
        touch the agent: ``retry``. Only a lease that names another owner, or is gone while
        the source no longer has the task working under our token, fences: ``fenced``.
        A lease gone or damaged while the task is still ours is rewritten from memory."""
        changes = {**self._pending, **changes}
        try:
            updated = self.store.heartbeat(self.task_id, self.token, clock.now(), **changes)
        except (OSError, LeaseError) as exc:
            self._pending = changes
            self._line(f"heartbeat failed ({exc}); the agent keeps running, retrying")
            return BEAT_RETRY
        if updated is not None:
            self._lease, self._pending = updated, {}
            return BEAT_OK
        return self._recover_lease(changes)

    def _recover_lease(self, changes: dict) -> str:
        try:
            current = self.store.read(self.task_id)  # a damaged file is quarantined here
        except (OSError, LeaseError) as exc:
            self._pending = changes
            self._line(f"lease unreadable ({exc}); retrying")
            return BEAT_RETRY
        if current is not None:
            return BEAT_FENCED  # another owner's token: the scheduler re-owned it
        if outbox.path_for(self.settings.outbox_dir, self.task_id, self.token).exists():
            return BEAT_FENCED  # a pass reclaimed it and kept its result in the outbox
        try:
            task = self._open_source().current([self.task_id]).get(self.task_id)
        except (SourceError, OSError) as exc:
            self._pending = changes
            self._line(f"lease missing and the task source unreachable ({exc}); the agent "
                       "keeps running, retrying")
            return BEAT_RETRY
        if task is None or task.status != base.WORKING or task.lease_token != self.token:
            return BEAT_FENCED  # reclaimed and reported: the task moved on
        assert self._lease is not None
        same_boot = self._lease.boot_id is not None and self._lease.boot_id == clock.boot_id()
        mono = {"heartbeat_mono": round(clock.monotonic(), 3)} if same_boot else {}
        lease = replace(self._lease, heartbeat=clock.now(), **{**mono, **changes})
        try:
            self.store.create(lease)
        except AlreadyLeased:
            return BEAT_RETRY  # someone wrote one meanwhile: judged at the next beat
        except (OSError, LeaseError) as exc:
            self._pending = changes
            self._line(f"rewriting the missing lease failed ({exc}); retrying")
            return BEAT_RETRY
        self._lease, self._pending = lease, {}
        self._line("lease was missing or damaged while the task is still ours: rewritten "
                   "from the wrapper's own record")
        return BEAT_OK

    def _open_source(self):
        if self._source is None:
            from scheduler.sources import open_source

            self._source = open_source(self.settings)
        return self._source

    def _retry(self, action, what: str, give_up_after: float) -> None:
        """Run a state change, retrying I/O errors with backoff (a full disk frees up) for
        up to ``give_up_after`` seconds."""
        delay, deadline = 0.1, time.monotonic() + give_up_after
        while True:
            try:
                action()
                return
            except (OSError, LeaseError) as exc:
                if time.monotonic() > deadline:
                    self._line(f"{what} failed ({exc}); giving up")
                    return
                self._line(f"{what} failed ({exc}); retrying")
                time.sleep(delay)
                delay = min(delay * 2, KEEP_RETRY_MAX_SEC)

    # --- the merge queue ---------------------------------------------------------------

    def _merges(self, attempt: Attempt) -> bool:
        return (attempt.outcome == base.SUCCEEDED and self.settings.merge != "off"
                and self.workspace is not None and self.workspace.mode == "worktree"
                and self.context is not None)

    def _land(self, lease, attempt: Attempt) -> None:
        """Merge the branch of a succeeded attempt; the attempt's outcome and note say how
        it went (see scheduler.merge.landing)."""
        assert self.workspace is not None and self.context is not None
        started = time.monotonic()
        try:
            landed = landing.land(self.context, self.workspace,
                                  lambda files: self._merging(lease, files))
        except Exception as exc:  # a bug here must still leave a result behind
            landed = landing.Landed(landing.ERROR, self.settings.target_branch,
                                    error=f"wrapper error: {exc!r}")
        if self._fenced:  # the lease was reclaimed meanwhile: report nothing
            attempt.fenced = True
            return
        self._landed = landed
        spent = time.monotonic() - started
        said = landing.verdict(landed, self.settings, self.task_id, spent)
        attempt.outcome = said.outcome
        if said.outcome != base.SUCCEEDED:  # why it failed: last_error
            attempt.note = "; ".join(n for n in (attempt.note, said.text) if n)
        self._merge_text, self._merge_detail, self._merge_park = said.text, said.detail, said.park
        self._line(f"merge: {landed.outcome}: {said.text} ({spent:.2f} s)")

    def _merging(self, lease, files: tuple[str, ...]) -> None:
        """The branch waits to merge: the lease says so and holds the files it changed."""
        target = self.settings.target_branch
        metadata = {**(lease.metadata or {}), "changed_files": list(files),
                    "merging_into": target}
        # A lease that cannot be written now (a full disk) gets these fields at the next
        # heartbeat that can; only a fenced one stops the merge.
        if self._beat(state=MERGING, metadata=metadata) == BEAT_FENCED:
            self._fenced = True
            raise git_merge.GitError("the lease was lost before the merge")
        shown = ", ".join(files[:10]) + (" ..." if len(files) > 10 else "")
        self._line(f"merging into {target}: {len(files)} file(s) changed: {shown}")
        self._note_source(f"merging into {target}: {len(files)} file(s) changed: {shown}")

    def _note_source(self, text: str) -> None:
        """A history note (or comment) that changes nothing; best effort."""
        try:
            note = getattr(self._open_source(), "note", None)
            if note is not None:
                note(self.task_id, text)
        except Exception as exc:
            self._line(f"could not write the note to the task source ({exc})")

    # --- launching ----------------------------------------------------------------------

    def _launch_and_wait(self, lease, log_path: Path) -> Attempt:
        task = taskfile.read(self.settings.task_log_dir, self.task_id)
        if self.settings.workspace_mode != "none":
            self._first_line(lease)  # workspace notes follow it
        self.context = Context(self.settings, self.task_id, lease.attempt,
                               title=str(task.get("title", "")),
                               log_write=self._log_bytes,
                               tick=self._tick, note=self._line)
        try:
            self.workspace = modes.begin(self.context)
        except WorkspaceError as exc:
            self._header(lease, [])
            if self._fenced:
                return Attempt(base.OUTCOME_CANCELLED, fenced=True)
            if self._stop_signal is not None:
                return Attempt(base.OUTCOME_CANCELLED,
                               note=f"wrapper got signal {self._stop_signal} while preparing "
                                    "the workspace")
            if isinstance(exc, LowDisk):  # skipped, not failed: no attempt is counted
                return Attempt(base.NOT_STARTED, note=str(exc))
            return Attempt(base.LAUNCH_FAILED, note=str(exc))
        workspace = self.workspace
        if workspace is not None and workspace.mode == "worktree" \
                and self.settings.merge != "off" and landing.interrupted(self.context):
            self._header(lease, [])
            self._line("an earlier attempt was stopped while merging its branch: the merge "
                       "is finished now and the agent is not run again")
            return Attempt(base.SUCCEEDED, exit_code=0,
                           note="finished the merge an earlier attempt began")
        values = {
            "task_id": self.task_id, "agent": lease.agent, "queue": lease.queue or "",
            "attempt": str(lease.attempt), "recipe": "", "recipe_path": "",
            "title": task.get("title", ""),
            "task_file": str(taskfile.path_for(self.settings.task_log_dir, self.task_id)),
            "base_path": str(self.settings.base_path), "goose_bin": self.settings.goose_bin,
            "workspace": str(workspace.path) if workspace else "",
            "branch": (workspace.branch or "") if workspace else "",
        }
        template = self.settings.agent_command
        result_path = result_file.path_for(self.task_dir, lease.attempt)
        try:
            if "{prompt}" in template:
                values["prompt"] = self._prompt(lease, task)
            _remove_stale(result_path)
            if uses_recipe(template):
                recipe = lease.recipe or f"{lease.agent}.yaml"
                values["recipe"] = recipe
                values["recipe_path"] = str(resolve_recipe(self.settings.recipes_dir, recipe))
            argv = build_argv(template, values)
        except (LaunchError, ValueError) as exc:
            self._header(lease, [])
            return Attempt(base.LAUNCH_FAILED, note=str(exc))
        try:
            agent_limits = limits.effective(self.settings, _resources_of(self.settings,
                                                                         lease.agent))
            argv = self._sandboxed(argv, workspace)
        except (LaunchError, ConfigError) as exc:
            self._header(lease, argv)
            return Attempt(base.LAUNCH_FAILED, note=str(exc))
        self._header(lease, argv)
        if agent_limits:
            self._line(f"limits {agent_limits.describe()}")
        env = dict(os.environ)
        env.pop("TINYSCHEDULER_MCP_TOKEN", None)  # the scheduler's secret, not the agent's
        env.update({
            "TINYSCHEDULER_TASK_ID": self.task_id,
            "TINYSCHEDULER_AGENT": lease.agent,
            "TINYSCHEDULER_ATTEMPT": str(lease.attempt),
            "TINYSCHEDULER_TASK_FILE": values["task_file"],
            "TINYSCHEDULER_RESULT_FILE": str(result_path),
        })
        if workspace is not None:
            env["TINYSCHEDULER_WORKSPACE"] = str(workspace.path)
            recorded = {"workspace": str(workspace.path), "branch": workspace.branch,
                        "base_commit": workspace.base_commit}
            if workspace.branch:
                env["TINYSCHEDULER_BRANCH"] = workspace.branch
            taskfile.update(self.settings.task_log_dir, self.task_id, **recorded)
        attempt = self._supervise(lease, argv, env, agent_limits)
        return attempt

    def _prompt(self, lease, task: dict) -> str:
        """The task's prompt from PROMPT_TEMPLATE_FILE (or the default); ValueError names a
        template that cannot be read."""
        template_path = self.settings.prompt_template_file
        template = prompt.load_template(template_path if template_path else None)
        previous = ""
        if lease.attempt > 1:
            try:
                said = result_file.read(result_file.path_for(self.task_dir, lease.attempt - 1))
                previous = said.summary if said else ""
            except result_file.BadResultFile:
                pass
        return prompt.render(template, {
            "id": self.task_id, "title": task.get("title", ""),
            "description": task.get("description", ""), "queue": lease.queue or "",
            "agent": lease.agent, "attempt": lease.attempt, "previous_summary": previous,
            "previous_error": task.get("last_error") or "",
            "workspace": str(self.workspace.path if self.workspace else self.settings.work_dir),
        })

    # --- judging the outcome ------------------------------------------------------------

    def _judge(self, lease, attempt: Attempt, log_path: Path) -> AgentResult | None:
        """Refine the attempt's outcome from its result file, adapter and output."""
        try:
            options = agent_options.for_agent(self.settings, lease.agent)
        except ConfigError as exc:
            self._line(f"agent options ignored: {exc}")
            options = agent_options.defaults(self.settings)
        verdict = judge(attempt.outcome, attempt.exit_code,
                        result_path=result_file.path_for(self.task_dir, lease.attempt),
                        log_path=log_path, options=options,
                        adapter=self.settings.agent_result_adapter)
        if verdict.problem:
            self._line(verdict.problem)
        if verdict.outcome != attempt.outcome or verdict.note:
            attempt.outcome = verdict.outcome
            attempt.note = "; ".join(n for n in (attempt.note, verdict.note) if n)
        self._judged_problem = verdict.problem
        return verdict.agent_result

    def _hold_or_release_agent(self, agent: str, result: Result,
                               said: AgentResult | None) -> None:
        """Before the task is requeued: hold a rate-limited agent back, release it at its
        first success, add the attempt's cost to its day. Never loses the result."""
        directory = self.settings.throttle_dir
        try:
            if result.outcome == base.RATE_LIMITED:
                record = throttles.record_rate_limit(
                    directory, agent, clock.now(),
                    lambda streak: ratelimit.next_delay(
                        streak, base_sec=self.settings.rate_limit_backoff_sec,
                        max_sec=self.settings.rate_limit_backoff_max_sec,
                        retry_after_sec=said.retry_after_sec if said else None),
                    reason=result.detail.get("reason", "rate-limited"))
                self._line(f"agent {agent} rate-limited until {record.rate_limited_until} "
                           f"({ratelimit.ordinal(record.streak)} in a row)")
            elif result.outcome == base.SUCCEEDED:
                throttles.record_success(directory, agent)
            if said is not None and said.cost_usd:
                throttles.add_cost(directory, agent, clock.now(), said.cost_usd)
        except (OSError, ValueError) as exc:
            self._line(f"could not record the agent's hold or cost ({exc})")

    def _sandboxed(self, argv: list[str], workspace: Workspace | None) -> list[str]:
        """The agent's argv, under bubblewrap when SANDBOX=bwrap."""
        if self.settings.sandbox != "bwrap":
            return argv
        program = sandbox.find()
        if program is None:
            raise LaunchError(f"SANDBOX=bwrap but bwrap is not on PATH; {sandbox.INSTALL_HINT}")
        cwd = workspace.path if workspace is not None else self.settings.work_dir
        writable = list(self.settings.sandbox_writable)
        if workspace is not None and workspace.mode == "worktree":
            writable += sandbox.git_writable(workspace.path)
        # Read-only views of BASE_PATH and REPO_DIR come back after the private /tmp (where
        # they would otherwise be hidden, or replaced by writable scratch directories).
        readable = [self.settings.base_path, self.task_dir]
        if self.settings.repo_dir is not None:
            readable.insert(1, self.settings.repo_dir)
        readable += sandbox.hidden_by_private_tmp(argv)
        return sandbox.wrap(argv, program=program,
                            workspace=workspace.path if workspace else None, cwd=cwd,
                            writable=writable, readable=readable)

    def _supervise(self, lease, argv: list[str], env: dict,
                   agent_limits: limits.Limits = limits.NONE) -> Attempt:
        """Start the agent gated, record it in the lease, open the gate, wait."""
        held = self.liveness.fileno()
        assert held is not None  # adopted
        lock_fd = os.dup(held)  # the agent keeps only this duplicate
        cwd = self.workspace.path if self.workspace is not None else self.settings.work_dir
        # The rule for agents: every process they start inherits this descriptor and keeps
        # the task "running" while it lives; one meant to outlive the attempt closes it.
        env = {**env, "TINYSCHEDULER_LIVENESS_FD": str(lock_fd)}
        output_fd = self._out.agent_output()
        try:
            agent = AgentProcess(argv, env=env, cwd=cwd, output_fd=output_fd,
                                 lock_fd=lock_fd, rlimits=limits.rlimits(agent_limits))
        finally:
            os.close(lock_fd)
            if output_fd != self._out.fd:
                os.close(output_fd)  # the agent has it; EOF comes when it is gone
        verdict = self._beat(agent_pid=agent.pid, agent_started_at=_start_time_of(agent.pid))
        if verdict == BEAT_FENCED or self._renew_run() == FENCED:
            agent.abort()
            return Attempt(base.OUTCOME_CANCELLED, fenced=True)
        try:
            if self._stop_signal is not None:
                agent.abort()
                return Attempt(base.OUTCOME_CANCELLED,
                               note=f"wrapper got signal {self._stop_signal} before the agent "
                                    "started")
            error = agent.release()
            if error is not None:
                return Attempt(base.LAUNCH_FAILED, note=error)
            self.store.close_retired()  # the agent runs: nothing waits on this now
            attempt = self._wait(agent)
            if attempt.outcome != base.SUCCEEDED and agent_limits:
                self._name_limit(attempt, agent, agent_limits)
            return attempt
        except BaseException:
            # Never leave an agent running unsupervised: the attempt is about to be
            # reported and its lease deleted.
            if agent.returncode is None:
                agent.signal_group(signal.SIGKILL)
                agent.wait()
            raise

    def _name_limit(self, attempt: Attempt, agent: AgentProcess,
                    agent_limits: limits.Limits) -> None:
        """Say which resource limit stopped the agent, when that can be told."""
        named = limits.name_the_limit(
            agent_limits, exit_code=attempt.exit_code, signum=attempt.signal,
            cpu_sec=agent.cpu_seconds(),
            tail=_tail(self.log.tail(SUMMARY_TAIL_BYTES) if self.log is not None else b""),
            sandboxed=self.settings.sandbox == "bwrap")
        if named:
            attempt.limit = named
            attempt.note = f"{named}; {attempt.note}" if attempt.note else named
            self._line(f"the agent was stopped by its {named}")

    def _tick(self) -> bool:
        """Called during long workspace steps and hooks: keep the lease alive; False when
        the attempt must stop (fenced, or a stop signal arrived)."""
        if self._beat() == BEAT_FENCED:  # an I/O error only retries at the next tick
            self._fenced = True
            return False
        return self._stop_signal is None

    def _keep_alive(self) -> bool:
        """Heartbeat only; False when fenced."""
        if self._beat() == BEAT_FENCED:
            self._fenced = True
            return False
        return True

    # --- waiting ------------------------------------------------------------------------

    def _wait(self, agent: AgentProcess) -> Attempt:
        self._open_wakeup()
        try:
            return self._wait_loop(agent)
        finally:
            self._close_wakeup()

    def _wait_loop(self, agent: AgentProcess) -> Attempt:
        settings = self.settings
        now = time.monotonic()
        runtime_deadline = now + settings.max_runtime_sec
        next_heartbeat = now + settings.heartbeat_sec
        next_idle_check = now + IDLE_CHECK_SEC if settings.idle_timeout_sec else float("inf")
        last_size, last_growth = self._log_size(), now
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(runtime_deadline, next_heartbeat, next_idle_check) - now)
            if self._stop_signal is not None:
                timeout = 0.0  # it arrived before the wake-up pipe existed
            pidfd = agent.fileno()
            if pidfd is None:
                timeout = min(timeout, 0.05)
            readable, _, _ = select.select(self._watched(agent), [], [], timeout)
            self._out.pump()
            if agent.poll() is not None:
                self._kill_stragglers(agent)
                self._out.pump()  # what it wrote before it ended
                return _ended(agent.returncode)
            now = time.monotonic()
            if self._signal_r in readable:
                _drain(self._signal_r)
            if self._stop_signal is not None:
                return self._stop(agent, base.OUTCOME_CANCELLED,
                                  f"wrapper got signal {self._stop_signal}")
            if now >= runtime_deadline:
                return self._stop(agent, base.TIMED_OUT,
                                  f"ran longer than {settings.max_runtime_sec} s")
            if now >= next_heartbeat:
                next_heartbeat = now + settings.heartbeat_sec
                lost = self._renew_run()
                if lost == FENCED or self._beat() == BEAT_FENCED:
                    attempt = self._stop(agent, base.OUTCOME_CANCELLED, "fenced")
                    attempt.fenced = True
                    return attempt
                if lost:
                    return self._stop(agent, base.STALLED, lost)
            if now >= next_idle_check:
                next_idle_check = now + IDLE_CHECK_SEC
                size = self._log_size()
                if size != last_size:
                    last_size, last_growth = size, now
                elif now - last_growth >= settings.idle_timeout_sec:
                    return self._stop(agent, base.STALLED,
                                      f"no output for {settings.idle_timeout_sec} s")

    def _renew_run(self) -> str | None:
        """Several hosts: heartbeat this attempt's run row. ``FENCED`` when another host
        took it over; a reason when the database has been unreachable for longer than
        the stale window (a partition: the other hosts will reclaim the run); None while
        all is well (or on one host)."""
        from scheduler.errors import TinySchedulerError
        from scheduler.sources import open_coordinator

        settings = self.settings
        try:
            if self._runs is None:
                self._runs = open_coordinator(settings) or False
            if self._runs is False:
                return None
            alive = self._runs.renew(self.task_id, self.token)
        except TinySchedulerError as exc:
            window = settings.heartbeat_sec * settings.stale_multiplier
            silent = time.monotonic() - self._renewed_at
            self._line(f"cannot renew the run ({exc}); silent for {silent:.0f} s")
            if silent > window:
                return (f"lost the database for {silent:.0f} s (more than {window} s); "
                        "another host takes the task over")
            return None
        if not alive:
            return FENCED
        self._renewed_at = time.monotonic()
        return None

    def _stop(self, agent: AgentProcess, outcome: str, why: str) -> Attempt:
        """SIGTERM the agent's group, SIGKILL after the grace period; record why."""
        self._line(f"stopping agent (pid {agent.pid}): {why}")
        agent.signal_group(signal.SIGTERM)
        if self._wait_copying(agent, self.settings.kill_grace_sec) is None:
            self._line(f"agent ignored SIGTERM for {self.settings.kill_grace_sec} s: SIGKILL")
            agent.signal_group(signal.SIGKILL)
            agent.wait()
        self._kill_stragglers(agent)
        self._out.pump()
        ended = _ended(agent.returncode)
        return Attempt(outcome, ended.exit_code, ended.signal, note=why)

    def _kill_stragglers(self, agent: AgentProcess) -> None:
        """The agent has ended: whatever it left in its process group ends with it, so
        nothing of this attempt outlives its report (or overlaps the next attempt)."""
        if agent.signal_group(signal.SIGKILL):
            self._line(f"killed processes left in the agent's process group {agent.pid}")

    def _watched(self, agent: AgentProcess) -> list[int]:
        """What the wait loop selects on: signals, the agent's end, its output pipe."""
        return [fd for fd in (self._signal_r, agent.fileno(), self._out.fileno())
                if fd is not None and fd >= 0]

    def _wait_copying(self, agent: AgentProcess, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the agent to end, copying its output
        meanwhile (an agent blocked on a full pipe could not end); its return code."""
        deadline = time.monotonic() + timeout
        while agent.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = remaining if agent.fileno() is not None else min(remaining, 0.02)
            watched = [fd for fd in (agent.fileno(), self._out.fileno()) if fd is not None]
            select.select(watched, [], [], wait)
            self._out.pump()
        return agent.returncode

    def _log_size(self) -> int:
        return self.log.progress() if self.log is not None else 0

    # --- signals ------------------------------------------------------------------------

    def _open_wakeup(self) -> None:
        """While the agent runs, a signal wakes the loop through a pipe. (Only then: the
        pipe is closed before the result is recorded, so the task source's files get the
        same descriptors as ever.)"""
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_w, False)
        os.set_blocking(self._signal_r, False)
        self._old_wakeup = signal.set_wakeup_fd(self._signal_w)

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    def _close_wakeup(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._signal_r)
        os.close(self._signal_w)
        self._signal_r = self._signal_w = -1

    # --- the attempt log -----------------------------------------------------------------

    def _log_bytes(self, data: bytes) -> None:
        """Output of a hook, into the attempt log (capped like the agent's)."""
        if self.log is not None:
            try:
                self.log.write(data)
            except OSError:  # a full disk loses hook output, never the attempt
                pass

    def _line(self, text: str) -> None:
        if self.log is not None:
            try:
                self.log.write(f"[tinyscheduler {clock.to_iso(clock.now())}] {text}\n"
                               .encode(errors="backslashreplace"))
            except OSError:  # a full disk loses a note, never the attempt
                pass

    def _header(self, lease, argv: list[str]) -> None:
        """The attempt's first line (once), then the argv and start time."""
        self._first_line(lease)
        self._line(f"argv {json.dumps(argv)}")
        self._line(f"started {clock.to_iso(clock.now())}")

    def _first_line(self, lease) -> None:
        if not self._headed:
            self._headed = True
            self._line(f"task {self.task_id} agent {lease.agent} attempt {lease.attempt} "
                       f"host {self.settings.hostname}")

    def _footer(self, attempt: Attempt, duration: float) -> None:
        code = _how_ended(attempt)
        note = f" ({attempt.note})" if attempt.note else ""
        self._line(f"outcome {attempt.outcome}, {code}, {duration:.2f} s{note}")

    # --- the result ---------------------------------------------------------------------

    def _result(self, lease, attempt: Attempt, duration: float, log_path: Path,
                said: AgentResult | None = None) -> Result:
        tail = _tail(self.log.tail(SUMMARY_TAIL_BYTES) if self.log is not None else b"")
        code = _how_ended(attempt)
        if attempt.limit:
            code = f"{attempt.limit} ({code})"
        told = said.summary.strip() if said is not None else ""
        used = _usage_text(said)
        summary = ((f"{attempt.outcome}: {self._merge_text}\n" if self._merge_text else "")
                   + f"{attempt.outcome}: {code}, {duration:.1f} s{used}, attempt {lease.attempt}, "
                   f"host {self.settings.hostname}, log {log_path}"
                   + (f"\nreason: {attempt.note}" if attempt.note else "")
                   + (f"\nagent: {told}" if told else "")
                   + (f"\n{base.OUTPUT_MARK}\n{tail}" if tail and not told else ""))
        detail: dict = {"reason": attempt.note} if attempt.note else {}
        if said is not None:
            if told:
                detail["summary"] = told[:1000]
            if said.usage():
                detail["usage"] = said.usage()
            if said.links:
                detail["links"] = list(said.links)
            if said.files_changed:
                detail["files_changed"] = list(said.files_changed)
        if self._judged_problem:
            detail["result_file"] = self._judged_problem
        if self._merge_detail:
            detail["merge"] = self._merge_detail
        if self._merge_park:
            detail["park"] = True
        return Result(
            task_id=self.task_id, agent=lease.agent, attempt=lease.attempt,
            outcome=attempt.outcome, token=self.token,
            summary=summary.encode()[:SUMMARY_MAX_BYTES].decode(errors="ignore"),
            exit_code=attempt.exit_code, signal=attempt.signal, duration_sec=round(duration, 3),
            host=self.settings.hostname, log_path=str(log_path), finished_at=clock.now(),
            detail=detail,
        )

    def _record(self, result: Result) -> str:
        """Make the result safe: first in the outbox (so a slow or hung source can lose
        nothing, whatever happens to this process), then reported to the source, then the
        outbox entry removed. While it can be neither written nor reported, it is kept in
        memory and retried, the lease heartbeated meanwhile. Returns what the source did
        with it (``outbox`` when it waits there, ``dropped`` when fenced meanwhile)."""
        delay = 0.5
        while True:
            kept = self._keep(result)
            reported = self._report(result)
            if reported and kept is not None:
                try:
                    self._held_files.unlink(kept)
                except OSError as exc:  # delivered again later: ignored as a duplicate
                    self._line(f"delivered, but the outbox entry stays ({exc})")
            if reported or kept is not None:
                return reported or "outbox"
            self._line(f"result neither reported nor written to the outbox; kept in memory, "
                       f"retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, KEEP_RETRY_MAX_SEC)
            if self._beat(state=FINISHING) == BEAT_FENCED:
                self._line("lease re-owned while the result was kept in memory: dropped")
                return "dropped"

    def _keep(self, result: Result) -> Path | None:
        try:
            return outbox.write(self.settings.outbox_dir, result)
        except OSError as exc:
            self._line(f"the result could not be written to the outbox ({exc})")
            return None

    def _report(self, result: Result) -> str | None:
        """Report to the source within REPORT_DEADLINE_SEC; what it did with the result,
        or None when it could not be reached."""
        policy = RetryPolicy.from_settings(self.settings)
        try:
            source = self._open_source()
            setter = getattr(source, "set_deadline", None)
            if setter is not None:
                setter(time.monotonic() + REPORT_DEADLINE_SEC)
            applied = source.report(result, policy)
        except Exception as exc:
            self._line(f"task source unreachable ({exc}); result kept in "
                       f"{outbox.path_for(self.settings.outbox_dir, result.task_id, result.token)}")
            return None
        self._line(f"reported {result.outcome}: {applied.action} {applied.note}".rstrip())
        return applied.action or "reported"

    def _record_outcome(self, result: Result, action: str) -> None:
        """One line in ``outcomes.jsonl`` (the dashboard's counters and recent outcomes)
        and one in the scheduler log. Neither may fail the attempt: it is recorded.
        Nothing for a result dropped when fenced: the scheduler records what it reclaimed."""
        if action == "dropped":
            return
        try:
            records.append_outcome(self.settings, records.outcome_entry(result, action))
        except OSError as exc:
            self._line(f"could not record the outcome: {exc}")
        level = logging.INFO if result.outcome == base.SUCCEEDED else logging.WARNING
        append_event(self.settings.log_dir, self.settings.log_format, level,
                     f"task {result.task_id} {result.outcome}", {
                         "task": result.task_id, "agent": result.agent,
                         "attempt": result.attempt, "outcome": result.outcome,
                         "duration_sec": result.duration_sec, "action": action})


# --- process helpers -----------------------------------------------------------------------


def _resources_of(settings, agent: str):
    """The agent's resource limits from its agent-control entry (None: the globals)."""
    from scheduler.config.registry import parse_control_entries

    if not settings.agent_control_file.exists():
        return None
    for entry in parse_control_entries(settings.agent_control_file):
        if entry.name == agent:
            return entry.resources
    return None


def _start_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _usage_text(said: AgentResult | None) -> str:
    """``, $0.25, 1,000 tokens in, 200 out`` when the agent reported any."""
    if said is None:
        return ""
    parts = [f"${said.cost_usd:.2f}"] if said.cost_usd is not None else []
    if said.tokens_in is not None or said.tokens_out is not None:
        parts.append(f"{said.tokens_in or 0:,} tokens in, {said.tokens_out or 0:,} out")
    return "".join(f", {part}" for part in parts)


def _remove_stale(path: Path) -> None:
    """A result file left from an earlier run of this attempt number is not this run's."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ended(returncode: int | None) -> Attempt:
    if returncode is None:  # never: callers have waited for the agent
        return Attempt(base.LAUNCH_FAILED, note="not started")
    if returncode < 0:
        return Attempt(base.KILLED, signal=-returncode)
    if returncode == 0:
        return Attempt(base.SUCCEEDED, exit_code=0)
    return Attempt(base.OUTCOME_FAILED, exit_code=returncode)


def _how_ended(attempt: Attempt) -> str:
    if attempt.signal is not None:
        return f"signal {attempt.signal}"
    if attempt.exit_code is None:
        return "not started"
    return f"exit code {attempt.exit_code}"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


def _tail(data: bytes) -> str:
    lines = [line for line in data.decode(errors="replace").splitlines()
             if not line.startswith("[tinyscheduler ")]
    return "\n".join(lines[-20:])
