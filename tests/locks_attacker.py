"""A second local user (`nobody`) attacking imgclean's lock state, for tests/test_locks_attacks.py
and benchmarks/fault_locks.py: a process started with setpriv that plants, holds, replaces and
removes files on command. It uses plain Python, not imgclean: an attacker brings their own code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534

# Commands, one JSON object a line on stdin; one answer line each ("ok" or "error: ...").
# Locks it takes are held until stdin closes.
ATTACKER = r"""
import fcntl, json, os, sys
held = []
def plant(path, content="", hold=False, mode=0o666):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)
    os.ftruncate(fd, 0)
    os.write(fd, content.encode("utf-8", "surrogateescape"))
    if hold:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    else:
        os.close(fd)
def hold(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    held.append(fd)
def replace(path):
    n = 0
    while os.path.lexists(f"{path}.old{n}"):
        n += 1
    os.rename(path, f"{path}.old{n}")
    plant(path)
def clear(path):
    for name in os.listdir(path):
        if name.endswith(".json") or name.startswith(".tmp-"):
            os.unlink(os.path.join(path, name))
ops = {
    "plant": plant, "hold": hold, "replace": replace, "clear": clear,
    "symlink": lambda path, target: os.symlink(target, path),
    "fifo": lambda path: os.mkfifo(path, 0o666),
    "mkdir": lambda path, mode=0o777: (os.mkdir(path), os.chmod(path, mode)),
    "unlink": lambda path: os.unlink(path),
}
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        ops[cmd.pop("op")](**cmd)
        print("ok", flush=True)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", flush=True)
"""

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # a RecursionError for any recursive JSON reader


def setpriv_command() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def cannot_attack() -> str | None:
    """Why a second user cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to run a second user (setpriv to nobody)"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    probe = subprocess.run([*setpriv_command(), sys.executable, "-c", "import fcntl, json"], capture_output=True)
    if probe.returncode:
        return f"this Python cannot run as nobody: {probe.stderr.decode(errors='replace')[-200:]}"
    return None


def shared_workdir(prefix: str = "imgclean-attack-") -> Path:
    """A fresh folder under /tmp that nobody can enter (pytest's own tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return Path(os.path.realpath(path))


class Attacker:
    """The second user's process; `do(op, **args)` runs one command and returns its answer."""

    def __init__(self):
        self.proc = subprocess.Popen([*setpriv_command(), sys.executable, "-c", ATTACKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")

    def do(self, op: str, **args) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **{k: os.fspath(v) if isinstance(v, Path) else v
                                                       for k, v in args.items()}}) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def must(self, op: str, **args) -> None:
        answer = self.do(op, **args)
        if answer != "ok":
            raise RuntimeError(f"attacker could not {op} {args}: {answer}")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> "Attacker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
