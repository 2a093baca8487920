"""Real agents: the result protocol, rate-limit detection, budgets, prompts and presets.

Pure rules and small readers; the wrapper, the pass and the CLI call into them.
"""
