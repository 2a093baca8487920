"""The dashboard (``tinyscheduler dashboard``): a separate, read-only web process.

It reads what ``status`` reads (leases, the pass records, the attempt logs, the task
source) and serves a page, a JSON API and Prometheus metrics. It never takes the
scheduler lock, probes no liveness lock and forks nothing. Its libraries (Starlette,
uvicorn, Jinja2, prometheus-client) come with the ``tinyscheduler[dashboard]`` extra and
are imported only by this package.
"""
