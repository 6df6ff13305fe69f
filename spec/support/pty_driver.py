#!/usr/bin/env python3
"""Drives a command through a pseudo-terminal, for the REPL's specs (spec/support/pty.lua).

Usage: pty_driver.py '<json>' with {"cmd": [...], "env": {...}, "steps": [...], "timeout": s}.
Steps, in order:
  ["expect", pattern, seconds]  wait until the output so far (since the last expect) matches
  ["send", text]                write text to the terminal
  ["sleep", seconds]
  ["signal", "INT" | "TERM"]    signal the child
  ["wait", seconds]             wait for the child to exit
Prints one JSON object: {"output": all output, "status": exit status or null, "error": the step
that failed or null}. The terminal is 80x24.
"""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time


def main():
    spec = json.loads(sys.argv[1])
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(spec["cmd"][0], spec["cmd"], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    out = bytearray()
    mark = 0
    status = None
    error = None
    deadline = time.monotonic() + spec.get("timeout", 30)

    def pump(seconds):
        nonlocal status
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([fd], [], [], min(left, 0.05))
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    reap(True)
                    return
                out.extend(data)
                return
            if reap(False):
                return

    def reap(block):
        nonlocal status
        if status is not None:
            return True
        p, st = os.waitpid(pid, 0 if block else os.WNOHANG)
        if p == 0:
            return False
        status = os.waitstatus_to_exitcode(st)
        if status < 0:
            status = 128 - status
        return True

    for step in spec["steps"]:
        kind = step[0]
        if kind == "expect":
            pattern = re.compile(step[1].encode(), re.S)
            end = min(time.monotonic() + step[2], deadline)
            while True:
                m = pattern.search(bytes(out), mark)
                if m:
                    mark = m.end()
                    break
                if time.monotonic() > end or status is not None and not select.select(
                        [fd], [], [], 0)[0]:
                    error = "expect %r" % step[1]
                    break
                pump(end - time.monotonic())
            if error:
                break
        elif kind == "send":
            os.write(fd, step[1].encode())
        elif kind == "sleep":
            end = time.monotonic() + step[1]
            while time.monotonic() < end:
                pump(end - time.monotonic())
        elif kind == "signal":
            os.kill(pid, getattr(signal, "SIG" + step[1]))
        elif kind == "wait":
            end = min(time.monotonic() + step[1], deadline)
            while status is None and time.monotonic() < end:
                pump(end - time.monotonic())
            if status is None:
                error = "wait"
                break
    # Drain what is left, then make sure the child is gone.
    end = time.monotonic() + 0.3
    while time.monotonic() < end and status is None:
        pump(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        reap(True)
        error = error or "still running"
    else:
        try:
            while select.select([fd], [], [], 0.05)[0]:
                data = os.read(fd, 65536)
                if not data:
                    break
                out.extend(data)
        except OSError:
            pass
    print(json.dumps({"output": out.decode("utf-8", "replace"), "status": status,
                      "error": error}))


main()
