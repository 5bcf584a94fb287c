"""Fixtures: start the fanout release binary on 127.0.0.1:0, wait for its `listening on` line,
hand the test its URL, and stop it afterwards (SIGTERM, then SIGKILL) so no process is left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from wsraw import LARGE

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("FANOUT_BIN", REPO / "target" / "release" / "fanout"))
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The drain timeout used unless a test passes its own: teardown waits for it.
DEFAULT_DRAIN = 3.0


class Server:
    """A running `fanout serve` child process."""

    def __init__(self, args: list[str], preexec_fn: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None, startup_timeout: float = 10.0):
        self.args = args
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.port: int | None = None
        full_env = dict(os.environ)
        full_env.setdefault("FANOUT_LOG", "info")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(BIN), "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or self.port is None:
            self.kill()
            raise RuntimeError(f"fanout did not report `listening on` in {startup_timeout}s:\n{self.log()}")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self.port is None:
                m = LISTENING.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._ready.set()
        self._ready.set()  # EOF: the process died before listening

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (from /proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait; SIGKILL if still running. Returns the exit code of a clean exit."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
        self._reader.join(5)
        return code


def _drain_of(args: list[str]) -> float:
    for i, a in enumerate(args):
        if a == "--drain-timeout" and i + 1 < len(args):
            v = args[i + 1]
            return float(v[:-2]) / 1000 if v.endswith("ms") else float(v.rstrip("s"))
    return DEFAULT_DRAIN


@pytest.fixture
def start():
    """A factory: `start("--max-connections", "5")` runs `fanout serve --listen 127.0.0.1:0
    --app echo ...` and returns a `Server`. Every server started is stopped at teardown; the test
    fails if one panicked or did not shut down within its drain timeout."""
    servers: list[Server] = []

    def _start(*flags: str, preexec_fn: Callable[[], None] | None = None,
               env: dict[str, str] | None = None) -> Server:
        args = ["--listen", "127.0.0.1:0", "--app", "echo", *flags]
        if "--drain-timeout" not in flags:
            args += ["--drain-timeout", f"{DEFAULT_DRAIN}s"]
        srv = Server(args, preexec_fn=preexec_fn, env=env)
        servers.append(srv)
        return srv

    yield _start

    problems = []
    for srv in servers:
        was_alive = srv.alive()
        code = srv.stop(_drain_of(srv.args) + 3.0)
        log = srv.log()
        if "panicked" in log:
            problems.append(f"fanout {srv.args} panicked:\n{log}")
        elif was_alive and code is None:
            problems.append(f"fanout {srv.args} did not exit after SIGTERM; killed it:\n{log[-4000:]}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def server(start) -> Server:
    """A fanout echo server with default flags."""
    return start()


@pytest.fixture
def large_server(start) -> Server:
    """A fanout echo server that takes messages of up to 16 MiB."""
    return start(*LARGE)


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
