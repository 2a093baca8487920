"""Task sources: ``local`` (embedded SQLite), ``tinytask`` (REST) and ``postgres``
(PostgreSQL, several hosts), plus the PostgreSQL run coordinator."""

from __future__ import annotations


def open_source(settings):
    """The task source the settings select, built lazily (no import cost until used)."""
    if settings.task_source == "postgres":
        from scheduler.sources.postgres.store import PostgresStore

        return PostgresStore.from_settings(settings)
    if settings.task_source == "tinytask":
        from scheduler.sources.tinytask import TinyTaskSource

        source = TinyTaskSource.from_settings(settings)
        if getattr(settings, "coordinator", "none") == "postgres":
            from scheduler.sources.postgres.coordinated import CoordinatedSource

            return CoordinatedSource.from_settings(settings, source)
        return source
    from scheduler.sources.local import LocalStore

    return LocalStore.from_settings(settings)


def several_hosts(settings) -> bool:
    """Do these settings share the backlog between hosts (a run coordinator)?"""
    return settings.task_source == "postgres" or getattr(settings, "coordinator", "") == \
        "postgres"


def open_coordinator(settings):
    """The run coordinator of a multi-host setup (renewing a wrapper's run), or None on
    one host."""
    if several_hosts(settings):
        from scheduler.sources.postgres.coordinator import Coordinator

        return Coordinator.from_settings(settings)
    return None
