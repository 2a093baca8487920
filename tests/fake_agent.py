#!/usr/bin/env python3
"""A tiny stand-in for an agent, driven by its arguments (standard library only).

The arguments are a list of steps run in order; each step is a word followed by its
fixed number of operands::

    exit N                 exit with status N (the default end is exit 0)
    print TEXT             print one line (flushed)
    lines N                print N numbered lines
    sleep S                sleep S seconds (float)
    ignore-term            ignore SIGTERM from now on
    on-term FILE           on SIGTERM: write FILE, then exit 143
    argv FILE              write this process's argv (after the script) as JSON to FILE
    env FILE LEASE         write a JSON report to FILE: the TINYSCHEDULER_* variables, pid,
                           pgid, sid, cwd, whether stdin is /dev/null, and whether the
                           lease file LEASE records this process as its agent_pid
    grandchild FILE        start a grandchild in this process group that ignores SIGTERM
                           and sleeps; write its pid to FILE
    ready FILE             write this process's pid to FILE (a "started" marker)
    wait FILE              wait until FILE exists (polling)
    write FILE TEXT        write TEXT to FILE (relative paths: in the working directory)
    append FILE TEXT       append one line TEXT to FILE
    expect FILE            exit 66 unless FILE exists
    absent FILE            exit 67 if FILE exists
    --                     stop: the remaining arguments are not steps

Files are written atomically (temp file + rename), so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ARITY = {"exit": 1, "print": 1, "lines": 1, "sleep": 1, "ignore-term": 0, "on-term": 1,
         "argv": 1, "env": 2, "grandchild": 1, "ready": 1, "wait": 1, "write": 2, "append": 2,
         "expect": 1, "absent": 1}


def write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def env_report(path: str, lease_path: str) -> None:
    try:
        with open(lease_path, encoding="utf-8") as handle:
            lease = json.load(handle)
    except (OSError, ValueError):
        lease = {}
    stdin, null = os.fstat(0), os.stat(os.devnull)
    report = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("TINYSCHEDULER_")},
        "pid": os.getpid(),
        "pgid": os.getpgrp(),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "stdin_is_devnull": (stdin.st_rdev, stdin.st_ino) == (null.st_rdev, null.st_ino),
        "lease_agent_pid": lease.get("agent_pid"),
        "lease_state": lease.get("state"),
    }
    write(path, json.dumps(report))


def on_term(path: str):
    def handler(signum, _frame):
        write(path, str(signum))
        os._exit(143)

    return handler


def grandchild(path: str) -> None:
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "time.sleep(300)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    write(path, str(child.pid))


def wait(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def lines(count: str) -> None:
    for number in range(int(count)):
        say(f"line {number}")


def append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (text + "\n").encode())
    os.close(fd)


def expect(path: str, present: bool, code: int) -> None:
    if os.path.exists(path) != present:
        say(f"fake_agent: {path} {'missing' if present else 'present'}")
        sys.exit(code)


STEPS = {
    "print": say,
    "lines": lines,
    "sleep": lambda seconds: time.sleep(float(seconds)),
    "ignore-term": lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    "on-term": lambda path: signal.signal(signal.SIGTERM, on_term(path)),
    "argv": lambda path: write(path, json.dumps(sys.argv[1:])),
    "env": env_report,
    "grandchild": grandchild,
    "ready": lambda path: write(path, str(os.getpid())),
    "wait": wait,
    "write": write,
    "append": append,
    "expect": lambda path: expect(path, True, 66),
    "absent": lambda path: expect(path, False, 67),
}


def main(args: list[str]) -> int:
    steps = list(args)
    while steps:
        word = steps.pop(0)
        if word == "--":
            break
        if word not in ARITY or len(steps) < ARITY[word]:
            say(f"fake_agent: bad step {word!r}")
            return 64
        operands, steps = steps[:ARITY[word]], steps[ARITY[word]:]
        if word == "exit":
            return int(operands[0])
        STEPS[word](*operands)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
