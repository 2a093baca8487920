"""Task sources: ``local`` (embedded SQLite) and ``tinytask`` (REST)."""

from __future__ import annotations


def open_source(settings):
    """The task source the settings select, built lazily (no import cost until used)."""
    if settings.task_source == "tinytask":
        from scheduler.sources.tinytask import TinyTaskSource

        return TinyTaskSource.from_settings(settings)
    from scheduler.sources.local import LocalStore

    return LocalStore.from_settings(settings)
