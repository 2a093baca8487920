"""Isolation of each task: its workspace (a git worktree or a private directory), the
lifecycle hooks around it, the agent's resource limits and its sandbox.

The wrapper prepares the workspace after adopting the lease and before starting the agent
(:mod:`.modes`); ``tinyscheduler workspace list|prune`` use :mod:`.prune`.
"""
