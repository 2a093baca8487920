"""PostgreSQL: a task store shared by several hosts (``TASK_SOURCE=postgres``) and the run
coordinator (runs as global leases, global limits, hosts, wake-ups) that the store and
TinyTask (``COORDINATOR=postgres``) use.

    db           one connection per process, bounded in time, errors without secrets
    schema       versioned migrations under an advisory lock
    coordinator  runs, fencing tokens, global limits, hosts, LISTEN/NOTIFY
    store        the task store (same model, rules and CLI as the embedded store)
    coordinated  TinyTask with its claims and runs coordinated in PostgreSQL

psycopg 3 is an optional dependency (``pip install 'tinyscheduler[postgres]'``), imported
only when one of these modules is.
"""
