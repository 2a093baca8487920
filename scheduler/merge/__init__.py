"""Parallel work that merges safely: declared files and the rule that keeps overlapping
tasks apart, and the merge of a finished task's branch onto its target."""
