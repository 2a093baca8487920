#!/usr/bin/env python3
"""Print the statement and branch figures of a coverage JSON report separately
(``coverage report`` shows one figure that mixes the two)."""

from __future__ import annotations

import json
import sys


def main(path: str = "coverage.json") -> int:
    with open(path, encoding="utf-8") as handle:
        totals = json.load(handle)["totals"]
    statements, missing = totals["num_statements"], totals["missing_lines"]
    branches, partial = totals["num_branches"], totals["missing_branches"]
    print(f"statements: {100 * (statements - missing) / statements:.1f} % "
          f"({statements - missing} of {statements})")
    if branches:
        print(f"branches:   {100 * (branches - partial) / branches:.1f} % "
              f"({branches - partial} of {branches})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
