"""One reconciliation pass: the imperative shell around the pure planner.

    deliver outbox -> scan leases, reclaim the dead -> stop runs the source no longer wants
    -> list idle work -> plan -> for each spawn: exclusive `starting` lease, claim in the
    source, start the wrapper -> write the pass summary.

Every step's failures are counted in the summary (exit 1), never raised past the pass,
except configuration errors (exit 2). ``dry_run`` computes the same plan and changes
nothing anywhere: no lease, no source write, no process.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from scheduler import clock, faults
from scheduler.agents import options as agent_options
from scheduler.agents.holds import Hold, holds
from scheduler.config.agentcmd import agent_program_problem
from scheduler.config.registry import Registry
from scheduler.errors import (
    AlreadyLeased,
    ConfigError,
    InvalidTransition,
    LeaseError,
    SourceError,
    SourceUnavailable,
)
from scheduler.logs import get_logger
from scheduler.names import is_valid_name
from scheduler.reconcile.cancel import signal_wrapper
from scheduler.reconcile.listing import Lister, Listing, can_window
from scheduler.reconcile.planner import LeaseView, Plan, free_slots, plan
from scheduler.sources.base import (
    NOT_STARTED,
    RECLAIMED,
    WORKING,
    Result,
    RetryPolicy,
    Task,
)
from scheduler.state import liveness, outbox, records, taskfile, throttles
from scheduler.state.leases import (
    RUNNING,
    STARTING,
    Lease,
    LeaseStore,
    is_owned,
    new_token,
    owner_tag,
)
from scheduler.state.pauses import Pauses
from scheduler.state.records import read_last_pass

log = get_logger("pass")

#: At most this many tasks that no agent can run are named in the pass summary (status,
#: metrics.jsonl).
MAX_UNRUNNABLE_SUMMARY = 20

#: Lease metadata key: the spawn token the source was claimed with, kept by a re-own.
CLAIM_TOKEN_KEY = "claimed_with"
#: Every call to the task source in one pass ends within this many seconds.
PASS_SOURCE_DEADLINE_SEC = 120.0
#: Reclaim reason of a task working under one of our tokens with no lease.
STRANDED = "stranded"


@dataclass
class PassSummary:
    """What one pass did; written to ``last-pass.json`` and one line of ``metrics.jsonl``."""

    time: str
    mode: str
    dry_run: bool
    source: str
    duration_sec: float = 0.0
    leases_scanned: int = 0
    reclaimed: dict = field(default_factory=dict)
    stopped: int = 0
    spawned: int = 0
    blocked_skipped: int = 0
    skipped: dict = field(default_factory=dict)
    outbox_delivered: int = 0
    outbox_pending: int = 0
    paused: str = "not paused"
    low_disk: str = ""  #: why tasks were skipped for lack of disk ("" = enough)
    agents: list = field(default_factory=list)
    cost_today_usd: dict = field(default_factory=dict)  #: agent -> spent this UTC day
    #: idle tasks no agent can run: [{"task": id, "reason": why}], the first 20
    unrunnable: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        reclaimed = sum(self.reclaimed.values())
        if self.dry_run:
            return (f"dry run: would spawn {self.spawned}, would reclaim {reclaimed}, "
                    f"{self.blocked_skipped} blocked, {self.leases_scanned} leases, "
                    f"{len(self.errors)} errors")
        return (f"pass: {self.spawned} spawned, {reclaimed} reclaimed, {self.stopped} stopped, "
                f"{self.blocked_skipped} blocked, {self.leases_scanned} leases, "
                f"{len(self.errors)} errors, {self.duration_sec * 1000:.0f} ms")


def _apply_deadline(source, deadline: float | None) -> None:
    setter = getattr(source, "set_deadline", None)  # sources with network calls have one
    if setter is not None:
        setter(deadline)


@dataclass
class PassResult:
    summary: PassSummary
    plan: Plan | None


class Reconciler:
    """Runs passes against one state directory. Reuses its task source across passes."""

    def __init__(self, settings, registry: Registry, *, source=None, launcher=None,
                 store: LeaseStore | None = None, probe=None, mode: str = "once") -> None:
        self.settings = settings
        self.registry = registry
        self.store = store or LeaseStore(settings.running_dir)
        self.probe = probe or liveness.SystemProbe(self.store)
        self._source = source
        self._launcher = launcher
        self.mode = mode
        self._previous_pass: str | None = None  #: when this process's last pass started
        self.policy = RetryPolicy.from_settings(settings)
        self.owner = owner_tag(settings.hostname, settings.running_dir)
        self.source_deadline_sec = PASS_SOURCE_DEADLINE_SEC
        self._source_deadline: float | None = None
        self.lister = Lister(registry)
        #: Tasks whose launch this reconciler reported as failed since the source was last
        #: asked for launch failures: already errors of the pass that reported them.
        self._own_launch_failures: set[str] = set()

    @property
    def source(self):
        if self._source is None:
            from scheduler.sources import open_source

            self._source = open_source(self.settings)
            _apply_deadline(self._source, self._source_deadline)
        return self._source

    @property
    def launcher(self):
        if self._launcher is None:
            from scheduler.reconcile.launcher import make_launcher

            self._launcher = make_launcher(self.settings, self.mode)
        return self._launcher

    def wake_listener(self):
        """The source's cross-host wake-up channel (several hosts), or None."""
        from scheduler.sources import several_hosts

        if not several_hosts(self.settings):
            return None
        coordinator = self.source.coordinator
        return coordinator.listener() if coordinator is not None else None

    def close(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
        if self._source is not None:
            self._source.close()
            self._source = None

    # --- the pass -----------------------------------------------------------------------

    def run_pass(self, *, dry_run: bool = False, pauses: Pauses | None = None) -> PassResult:
        pauses = pauses or Pauses()
        started = time.monotonic()
        now = clock.now()
        summary = PassSummary(time=clock.to_iso(now), mode=self.mode, dry_run=dry_run,
                              source=self.settings.task_source, paused=pauses.describe())
        self._set_source_deadline(started + self.source_deadline_sec)
        try:
            the_plan = self._pass(summary, now, dry_run, pauses)
        finally:
            self._set_source_deadline(None)
        self._summarise(the_plan, summary, started)
        return PassResult(summary, the_plan)

    def _set_source_deadline(self, deadline: float | None) -> None:
        """Bound every source call of this pass (applied when the source is opened)."""
        self._source_deadline = deadline
        if self._source is not None:
            _apply_deadline(self._source, deadline)

    def _pass(self, summary: PassSummary, now, dry_run: bool, pauses: Pauses) -> Plan:
        if not dry_run:
            if self._launcher is not None:
                self._launcher.reap()  # exited wrappers (exec mode), a fork server gone
            self._deliver_outbox(summary)
            self._report_launch_failures(summary)
            self._report_fork_failures(summary)  # after: recorded now, asked next pass
            self._coordinate(summary)
        leases = self.store.list(quarantine=not dry_run)
        summary.leases_scanned = len(leases)
        mono_now = clock.monotonic()
        verdicts = {lease.task_id: self._judge(lease, now, mono_now) for lease in leases}
        if not dry_run:
            leases = self._reclaim(leases, verdicts, summary)
            verdicts = {lease.task_id: None for lease in leases}
            self._stop_unwanted(leases, summary)
            self._requeue_stranded(leases, summary)
        views = [LeaseView(lease.task_id, lease.agent, verdicts.get(lease.task_id))
                 for lease in leases]
        low_disk = self._disk_shortage()
        summary.low_disk = low_disk or ""
        holds = self._holds(now, summary)

        def make_plan(listing: Listing) -> Plan:
            return plan(views, listing.tasks, self.registry, now,
                        disable_blocking=self.settings.disable_blocking, pauses=pauses,
                        holds=holds, low_disk=low_disk, counts=listing.counts,
                        occupied=self._occupied(leases, listing.tasks, summary))

        listing, the_plan = self._list_and_plan(summary, dry_run, make_plan, views, pauses,
                                                holds, low_disk)
        if dry_run:
            summary.reclaimed = dict(Counter(r.reason for r in the_plan.reclaims))
        elif listing is not None:
            self._spawn_all(the_plan, now, summary)
        if not dry_run:
            # Housekeeping after the spawns, off the path from a freed slot to its next
            # task: each removed lock file and each replaced lease is a file to free.
            self.store.remove_stale_lock_files({lease.task_id for lease in leases})
            self.store.close_retired()
        summary.blocked_skipped = (listing.blocked if listing and listing.blocked is not None
                                   else the_plan.skipped("blocked"))
        return the_plan

    # --- step 1: the outbox ----------------------------------------------------------------

    def _report_launch_failures(self, summary: PassSummary) -> None:
        """Attempts whose agent could not start since the previous pass are errors of this
        one (exit 1, an unhealthy status): each failed in a wrapper, after that pass ended."""
        finder = getattr(self.source, "launch_failures", None)
        after = self._previous_pass
        if after is None:
            last = read_last_pass(self.settings)
            after = last.get("time") if last else None
        self._previous_pass = summary.time
        own, self._own_launch_failures = self._own_launch_failures, set()
        if finder is None or not isinstance(after, str):
            return
        try:
            failures = finder(after, summary.time)
        except SourceError:
            return  # listing the tasks reports the source's trouble
        summary.errors += [f"task {task_id}: its agent could not start: {why}"
                           for task_id, why in failures if task_id not in own]

    def _deliver_outbox(self, summary: PassSummary) -> None:
        """Deliver every entry, each on its own: a bad entry is quarantined, an entry whose
        wrapper is still alive (it is delivering it itself) is left to it, and only an
        unreachable source stops the rest."""
        for path in outbox.pending(self.settings.outbox_dir):
            try:
                result = outbox.load(path)
            except FileNotFoundError:
                continue  # its wrapper delivered it and removed it since the listing
            except (ValueError, OSError) as exc:
                self._quarantine_entry(path, f"unreadable ({exc})", summary)
                continue
            if self.probe.lock_held(result.task_id):
                continue  # its wrapper is alive and reporting it
            try:
                applied = self.source.report(result, self.policy)
            except SourceUnavailable as exc:
                summary.errors.append(f"outbox delivery failed: {exc}")
                break
            except SourceError as exc:
                summary.errors.append(f"outbox entry {path.name} not delivered: {exc}")
                continue
            except Exception as exc:  # one bad record never stops everyone
                self._quarantine_entry(path, f"delivery raised {exc!r}", summary)
                continue
            path.unlink(missing_ok=True)
            summary.outbox_delivered += 1
            log.info("delivered outbox result", extra={"fields": {
                "task": result.task_id, "outcome": result.outcome, "action": applied.action}})
        summary.outbox_pending = len(outbox.pending(self.settings.outbox_dir))

    @staticmethod
    def _quarantine_entry(path, why: str, summary: PassSummary) -> None:
        try:
            moved = outbox.quarantine(path, why)
        except OSError as exc:
            summary.errors.append(f"outbox entry {path.name} {why}; could not be moved "
                                  f"aside: {exc}")
            return
        summary.errors.append(f"outbox entry {path.name} {why}; moved to {moved}")

    def _coordinate(self, summary: PassSummary) -> None:
        """Several hosts: heartbeat this host, reclaim the runs of dead ones."""
        from scheduler.sources import several_hosts

        if not several_hosts(self.settings) or self.source.coordinator is None:
            return  # one host: the source is not even opened for this
        try:
            self.source.coordinator.host_heartbeat()
            reclaimed = self.source.reclaim_dead_hosts(self.policy)
        except SourceError as exc:
            summary.errors.append(str(exc))
            return
        for result in reclaimed:
            summary.reclaimed["host_dead"] = summary.reclaimed.get("host_dead", 0) + 1
            log.warning("reclaimed the run of a dead host", extra={"fields": {
                "task": result.task_id, "host": result.host, "agent": result.agent}})

    # --- step 2: leases ----------------------------------------------------------------------

    def _judge(self, lease: Lease, now, mono_now: float) -> str | None:
        s = self.settings
        return liveness.classify(lease, now=now, this_host=s.hostname,
                                 max_runtime_sec=s.max_runtime_sec,
                                 spawn_timeout_sec=s.spawn_timeout_sec,
                                 kill_grace_sec=s.kill_grace_sec, probe=self.probe,
                                 mono_now=mono_now, boot_id=clock.boot_id())

    def _reclaim(self, leases: list[Lease], verdicts: dict, summary: PassSummary) -> list[Lease]:
        """Reclaim every dead lease; returns the leases still alive."""
        alive = []
        for lease in leases:
            reason = verdicts.get(lease.task_id)
            if reason is None:
                alive.append(lease)
                continue
            try:
                outcome = self._reclaim_one(lease, reason)
                if outcome == "reclaimed":
                    summary.reclaimed[reason] = summary.reclaimed.get(reason, 0) + 1
                    continue
                alive.append(lease)
                if outcome == "unkillable":
                    holders = liveness.describe_lock_holders(
                        self.store.lock_path(lease.task_id))
                    summary.errors.append(f"task {lease.task_id}: could not stop its process "
                                          f"({reason}); lease kept; its liveness lock is "
                                          f"{holders}")
            except Exception as exc:  # one lease never stops the others
                alive.append(lease)
                summary.errors.append(f"task {lease.task_id}: reclaim failed: {exc!r}")
        return alive

    def _reclaim_one(self, lease: Lease, reason: str) -> str:
        """Fence, kill if needed, requeue (or outbox), then drop the lease.

        Returns ``reclaimed``; ``changed`` when the lease moved on since it was judged (a
        wrapper adopted or heartbeated: it is alive); ``unkillable`` when its process or
        the liveness lock outlived the kill (the lease is kept, never requeued under it)."""
        # Re-own the lease first: a wrapper that is still alive sees a foreign token and
        # stops reporting (fencing), and leases without a token (left by older
        # schedulers) become deletable by compare-and-delete.
        # The source knows the attempt by the token it was claimed with; keep it across
        # re-owns so a pass that dies after the fence still reports under it.
        claimed_with = lease.metadata.get(CLAIM_TOKEN_KEY) or lease.spawn_token
        token = new_token(self.owner)
        metadata = {**lease.metadata, CLAIM_TOKEN_KEY: claimed_with}
        if self.store.reown(lease, token, metadata=metadata) is None:
            log.info("lease changed since it was judged; left for the next pass",
                     extra={"fields": {"task": lease.task_id, "reason": reason}})
            return "changed"
        # Said only now: a run that ended between the listing and the judgement (its lease
        # is gone) is no reclaim, and must not read like one in the log.
        log.warning("reclaiming lease", extra={"fields": {
            "task": lease.task_id, "agent": lease.agent, "reason": reason,
            "pid": lease.pid, "agent_pid": lease.agent_pid}})
        if liveness.needs_kill(reason) and lease.host == self.settings.hostname:
            grace = self.settings.kill_grace_sec
            for pid, started in ((lease.agent_pid, lease.agent_started_at),
                                 (lease.pid, lease.pid_started_at)):
                if (pid and started and not liveness.terminate_group(pid, started, grace)
                        and self.probe.start_time(pid) is not None):
                    return "unkillable"
            if self.probe.lock_held(lease.task_id):
                return "unkillable"  # something still holds the task: never requeue under it
        never_ran = lease.state == STARTING  # no wrapper ever adopted it
        result = Result(
            task_id=lease.task_id, agent=lease.agent, attempt=lease.attempt,
            outcome=NOT_STARTED if never_ran else RECLAIMED, token=claimed_with,
            summary=f"reclaimed: {reason} (attempt {lease.attempt}, host {lease.host}, "
                    f"pid {lease.pid})",
            host=lease.host, finished_at=clock.now(), detail={"reason": reason},
        )
        self._report_or_keep(result)
        faults.crash_point("after-reclaim-report")
        self.store.delete(lease.task_id, token)
        return "reclaimed"

    def _report_or_keep(self, result: Result) -> None:
        try:
            action = self.source.report(result, self.policy).action
            log.info("requeued after reclaim", extra={"fields": {
                "task": result.task_id, "action": action}})
        except SourceError as exc:
            path = outbox.write(self.settings.outbox_dir, result)
            action = "outbox"
            log.warning("source unreachable; reclaim result kept in the outbox",
                        extra={"fields": {"task": result.task_id, "path": str(path),
                                          "error": str(exc)}})
        self._record_outcome(result, action)

    def _record_outcome(self, result: Result, action: str) -> None:
        """An attempt the scheduler ended (reclaim, launch failure): one outcome line in
        ``outcomes.jsonl`` and one in the log, like a wrapper's."""
        try:
            records.append_outcome(self.settings, records.outcome_entry(result, action))
        except OSError as exc:
            log.warning("could not record an outcome", extra={"fields": {
                "task": result.task_id, "error": str(exc)}})
        log.warning(f"task {result.task_id} {result.outcome}", extra={"fields": {
            "task": result.task_id, "agent": result.agent, "attempt": result.attempt,
            "outcome": result.outcome, "duration_sec": result.duration_sec,
            "action": action}})

    def _stop_unwanted(self, leases: list[Lease], summary: PassSummary) -> None:
        """Both sides reconciled: a run whose task the source no longer has working on that
        agent (completed, cancelled, deleted, reassigned) is told to stop."""
        running = [lease for lease in leases
                   if lease.state == RUNNING and lease.host == self.settings.hostname]
        if not running:
            return
        try:
            now = self._states([lease.task_id for lease in running])
        except SourceError as exc:
            summary.errors.append(f"checking running tasks failed: {exc}")
            return
        for lease in running:
            found = now.get(lease.task_id)
            if found == (WORKING, lease.agent):
                continue
            state = "deleted" if found is None else f"{found[0]}, assigned to {found[1]}"
            if not self._still_running(lease):
                continue  # it ended since the listing (its own result, most often)
            try:
                stopped = bool(lease.pid and lease.pid_started_at and signal_wrapper(lease))
            except Exception as exc:  # one lease never stops the others
                summary.errors.append(f"task {lease.task_id}: stopping its run failed: {exc!r}")
                continue
            if stopped:
                summary.stopped += 1
                log.warning("stopping run the source no longer wants", extra={"fields": {
                    "task": lease.task_id, "agent": lease.agent, "source_state": state}})

    def _states(self, task_ids: list[str]) -> dict[str, tuple[str, str | None] | None]:
        """(status, assignee) of these tasks now: from the source's light ``states`` when
        it has one, else from whole tasks."""
        light = getattr(self.source, "states", None)
        if light is not None:
            return light(task_ids)
        return {task_id: None if task is None else (task.status, task.assignee)
                for task_id, task in self.source.current(task_ids).items()}

    def _working(self, leased: set[str]) -> list[Task]:
        """The source's working tasks that have no lease here and carry one of this
        scheduler's tokens (whole tasks are read only for those, when the source can
        list ids and tokens alone)."""
        light = getattr(self.source, "claimed", None)
        if light is None:
            candidates = self.source.working()
        else:
            wanted = [task_id for task_id, token in light()
                      if task_id not in leased and is_owned(token, self.owner)]
            candidates = [task for task in self.source.current(wanted).values()
                          if task is not None and task.status == WORKING] if wanted else []
        return [task for task in candidates
                if task.id not in leased and is_owned(task.lease_token, self.owner)]

    def _still_running(self, lease: Lease) -> bool:
        """Is this lease still the running lease of the same attempt? (Re-read: a wrapper
        that reported its result a moment ago has finished or removed it.)"""
        try:
            now = self.store.read(lease.task_id, quarantine=False)
        except (OSError, LeaseError):
            return False
        return (now is not None and now.state == RUNNING
                and now.spawn_token == lease.spawn_token)

    def _disk_shortage(self) -> str | None:
        """Too little free space where workspaces are made? (Only when they are made.)"""
        if self.settings.workspace_mode == "none":
            return None
        from scheduler.workspace.disk import shortage

        low = shortage(self.settings.workspaces_dir, self.settings.min_free_disk_mb)
        if low:
            log.warning("low disk: tasks skipped", extra={"fields": {"why": low}})
        return low

    def _requeue_stranded(self, leases: list[Lease], summary: PassSummary) -> None:
        """The other way round: a task the source has working under one of this scheduler's
        tokens but with no lease here (the lease was deleted or quarantined, or a pass died
        between claim and lease bookkeeping) would stay working for ever. Requeue it,
        unless its liveness lock is held: then its wrapper still runs (it rewrites a
        missing lease itself). Leases are listed before the source, and only this pass
        creates leases, so a task claimed by this pass can never look stranded."""
        leased = {lease.task_id for lease in leases}
        try:
            stranded = self._working(leased)
        except Exception as exc:  # never stops the pass: the other steps go on
            summary.errors.append(f"checking working tasks failed: {exc}")
            return
        for task in stranded:
            token = task.lease_token
            try:
                if self.probe.lock_held(task.id):
                    continue
                assert token is not None
                if outbox.path_for(self.settings.outbox_dir, task.id, token).exists():
                    continue  # its result waits in the outbox: delivered, not requeued
                if task.assignee is None or not is_valid_name(task.assignee):
                    summary.errors.append(f"task {task.id} is stranded in working with no "
                                          "agent assigned; left for a human")
                    continue
                log.warning("requeueing task stranded in working with no lease",
                            extra={"fields": {"task": task.id, "token": token}})
                self._report_or_keep(Result(
                    task_id=task.id, agent=task.assignee, attempt=task.attempts + 1,
                    outcome=RECLAIMED, token=token,
                    summary=f"reclaimed: stranded (working under lease {token} of host "
                            f"{self.settings.hostname} with no lease file and no live "
                            "wrapper; requeued)",
                    host=self.settings.hostname, finished_at=clock.now(),
                    detail={"reason": STRANDED}))
            except Exception as exc:  # one task never stops the others
                summary.errors.append(f"task {task.id}: requeueing stranded task failed: "
                                      f"{exc!r}")
                continue
            summary.reclaimed[STRANDED] = summary.reclaimed.get(STRANDED, 0) + 1

    # --- step 3: the source -----------------------------------------------------------------

    def _list_and_plan(self, summary: PassSummary, dry_run: bool, make_plan, views,
                       pauses: Pauses, holds, low_disk) -> tuple[Listing | None, Plan]:
        """List the idle work (the top of each listing when the source can, see
        listing.py) and plan it. A failing source leaves the plan without tasks (its
        reclaims stand) and spawns nothing."""
        if dry_run and self.settings.task_source == "local" \
                and not self.settings.tasks_db.exists():
            return None, make_plan(Listing([]))  # a dry run creates no store
        try:
            if can_window(self.source, dry_run, self.settings.disable_blocking):
                free = ({} if low_disk else
                        free_slots(views, self.registry, pauses=pauses, holds=holds))
                listing, the_plan = self.lister.windowed(self.source, free, pauses, make_plan)
            else:
                listing = self.lister.full(self.source)
                the_plan = make_plan(listing)
        except SourceError as exc:
            summary.errors.append(str(exc))
            log.error("task source failed; no spawns this pass",
                      extra={"fields": {"error": str(exc)}})
            return None, make_plan(Listing([]))
        if listing.skipped_invalid:
            summary.errors.append(f"{listing.skipped_invalid} task(s) from the source had "
                                  "invalid data")
        return listing, the_plan

    # --- step 5: spawning ---------------------------------------------------------------------

    def _spawn_all(self, the_plan: Plan, now, summary: PassSummary) -> None:
        """Lease and claim every planned task, then start their wrappers.

        The two halves are separate because wrappers are forked from this process (or
        from the daemon's fork server, forked once): the launcher lets the source release
        what a child must not inherit (the local store's SQLite connection) first."""
        claimed: list[tuple[Task, str, str]] = []
        if the_plan.spawns:
            problem = agent_program_problem(self.settings)
            if problem:  # every attempt would fail to launch: start none, say why
                summary.errors.append(f"{problem}; {len(the_plan.spawns)} task(s) not "
                                      "started")
                return
        for spawn in the_plan.spawns:
            try:
                token = self._lease_and_claim(spawn.task, spawn.agent, now)
            except SourceUnavailable as exc:
                summary.errors.append(f"task {spawn.task.id}: {exc}")
                break  # the source is down: stop spawning, keep the pass going
            except SourceError as exc:
                summary.errors.append(f"task {spawn.task.id}: {exc}")
                continue  # this task only
            except (OSError, LeaseError) as exc:
                summary.errors.append(f"task {spawn.task.id}: lease failed: {exc}")
                continue
            if token is not None:
                claimed.append((spawn.task, spawn.agent, token))
                log.info("spawning", extra={"fields": {
                    "task": spawn.task.id, "agent": spawn.agent, "why": spawn.why,
                    "attempt": spawn.task.attempts + 1}})
        if claimed:
            self.launcher.prepare(self.source)
        failed: list[tuple[Task, str, str, Exception]] = []
        for task, agent, token in claimed:
            try:
                self._launch(task, token)
                summary.spawned += 1
            except Exception as exc:  # this task's launch failed; the others go on
                failed.append((task, agent, token, exc))
        for task, agent, token, error in failed:
            self._launch_failed(task.id, agent, task.attempts + 1, token, str(error), summary)

    def _launch_failed(self, task_id: str, agent: str, attempt: int, token: str, why: str,
                       summary: PassSummary) -> None:
        """A wrapper that could not start: reported as ``launch_failed``, lease dropped."""
        summary.errors.append(f"task {task_id}: wrapper could not start: {why}")
        self._own_launch_failures.add(task_id)
        self._report_or_keep(Result(
            task_id=task_id, agent=agent, attempt=attempt, outcome="launch_failed",
            token=token, summary=f"launch_failed: the wrapper could not start: {why}",
            host=self.settings.hostname, finished_at=clock.now(), detail={"reason": why}))
        self.store.delete(task_id, token)

    def _report_fork_failures(self, summary: PassSummary) -> None:
        """Wrappers the daemon's fork server could not fork since the last pass (it answers
        after the pass that asked has moved on). A lease no longer under the launch's token
        was dealt with already."""
        failures = getattr(self._launcher, "failures", None)
        if failures is None:
            return
        for task_id, token, why in failures():
            try:
                lease = self.store.read(task_id)
                if lease is not None and lease.spawn_token == token \
                        and lease.state == STARTING:
                    self._launch_failed(task_id, lease.agent, lease.attempt, token, why,
                                        summary)
            except Exception as exc:  # one task never stops the others (the spawn
                # timeout reclaims a lease left behind)
                summary.errors.append(f"task {task_id}: its failed launch could not be "
                                      f"recorded: {exc!r}")

    def _lease_and_claim(self, task: Task, agent: str, now) -> str | None:
        """Steps 1-2 of the spawn protocol; the spawn token, or None when the task was
        taken meanwhile or cannot run here."""
        if not is_valid_name(task.id) or (task.recipe and not is_valid_name(task.recipe)):
            log.warning("skipping task with an invalid id or recipe",
                        extra={"fields": {"task": repr(task.id), "recipe": repr(task.recipe)}})
            return None
        s = self.settings
        token = new_token(self.owner)
        lease = Lease(
            task_id=task.id, agent=agent, state=STARTING, spawn_token=token, started_at=now,
            heartbeat=now, host=s.hostname, attempt=task.attempts + 1, queue=task.queue,
            recipe=task.recipe, scheduler_pid=os.getpid(), heartbeat_sec=s.heartbeat_sec,
            stale_multiplier=s.stale_multiplier, metadata={"title": task.title[:200]},
            boot_id=clock.boot_id(), started_mono=round(clock.monotonic(), 3),
        )
        try:
            self.store.create(lease)
        except AlreadyLeased:
            return None
        faults.crash_point("after-lease")
        try:
            self.source.claim(task.id, agent, token)
        except InvalidTransition as exc:
            self.store.delete(task.id, token)
            log.info("task taken meanwhile", extra={"fields": {"task": task.id,
                                                               "why": str(exc)}})
            return None
        except SourceError:
            # The claim may have reached the source (a lost answer): keep the `starting`
            # lease. No wrapper will adopt it, so the spawn timeout reclaims it and
            # reports "not started" under this token, which requeues the task if the
            # claim was applied and changes nothing if it was not.
            log.warning("claim failed, maybe after reaching the source; the starting lease "
                        "is kept until the spawn timeout", extra={"fields": {"task": task.id}})
            raise
        except BaseException:
            self.store.delete(task.id, token)
            raise
        faults.crash_point("after-claim")
        return token

    def _launch(self, task: Task, token: str) -> None:
        """Step 3: the task file for the agent, then the wrapper, detached."""
        taskfile.write(self.settings.task_log_dir, task)
        self.launcher.launch(task.id, token,
                             str(self.settings.running_dir / f"task_{task.id}.json"))
        faults.crash_point("after-spawn")

    def _occupied(self, leases: list[Lease], tasks: list[Task],
                  summary: PassSummary) -> dict[str, tuple[str, ...]]:
        """The files the tasks in flight hold: what they declared, or what they changed
        while they wait to merge. Asked only when a waiting task declares files."""
        if not leases or not any(task.files for task in tasks):
            return {}
        held: dict[str, tuple[str, ...]] = {}
        for lease in leases:
            changed = lease.metadata.get("changed_files") if lease.metadata else None
            if isinstance(changed, list) and all(isinstance(f, str) for f in changed):
                held[lease.task_id] = tuple(changed)
        try:
            current = self.source.current([lease.task_id for lease in leases])
        except SourceError as exc:
            summary.errors.append(f"reading the files of running tasks failed: {exc}")
            return {lease.task_id: ("**",) for lease in leases}  # wait rather than clash
        for task_id, task in current.items():
            if task is not None and task.files:
                held[task_id] = task.files + held.get(task_id, ())
        return held

    def _holds(self, now, summary: PassSummary) -> dict[str, Hold]:
        """Agents held back by a rate limit or their daily budget."""
        try:
            options = agent_options.load(self.settings)
        except ConfigError as exc:
            summary.errors.append(str(exc))
            options = {}
        default = self.settings.agent_daily_cost_max_usd
        budgets = {agent.name: options[agent.name].daily_cost_max_usd if agent.name in options
                   else default for agent in self.registry.agents}
        records = throttles.load_all(self.settings.throttle_dir)
        day = now.date().isoformat()
        summary.cost_today_usd = {agent: round(record.cost_on(day), 4)
                                  for agent, record in records.items() if record.cost_on(day)}
        return holds(records, now, budgets)

    # --- step 6: the summary ----------------------------------------------------------------

    def _summarise(self, the_plan: Plan, summary: PassSummary, started: float) -> None:
        if summary.dry_run:
            summary.spawned = len(the_plan.spawns)
        summary.skipped = dict(Counter(skip.kind for skip in the_plan.skips))
        summary.unrunnable = [{"task": skip.task_id, "reason": skip.reason}
                              for skip in the_plan.skips
                              if skip.kind == "unknown-agent"][:MAX_UNRUNNABLE_SUMMARY]
        summary.agents = [
            {"agent": a.name, "queue": a.queue, "used": a.used, "limit": a.limit,
             "planned": a.planned, "paused": a.paused, **({"held": a.held} if a.held else {})}
            for a in the_plan.agents
        ]
        summary.duration_sec = round(time.monotonic() - started, 4)
