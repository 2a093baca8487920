"""The pass: the pure planner, the reconciler around it, the launcher, the daemon loop,
and the status report."""
