"""The merge queue: a finished task's branch merged onto its target, crash-safely.

Declared files and the overlap rule live in :mod:`scheduler.file_patterns`."""
