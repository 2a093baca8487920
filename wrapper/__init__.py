"""The per-task supervisor: adopts a lease, runs one agent, heartbeats, reports the result."""
