"""State on disk: leases, liveness, the scheduler lock, outbox, pauses, records, the wake
socket and the task file; private files, written atomically."""
