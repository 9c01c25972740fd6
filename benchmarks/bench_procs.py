"""Run a command in a subprocess and measure it: wall time, peak memory, log timestamps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUN_PY = REPO / "run.py"
PYTHON = sys.executable
# time.monotonic() after which commands are stopped: the whole suite keeps to its time limit
deadline: float | None = None

# the file log of a run: "2025-01-01 12:00:00,123 MainProcess [INFO] logger.name: message"
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \[\w+\] \S+: (.*)$")


class CommandFailed(RuntimeError):
    """A measured command exited with a non-zero status."""


@dataclass
class Finished:
    """What a finished command took."""

    pid: int
    returncode: int
    started: float                 # time.time() just before the process was spawned
    wall: float                    # seconds from spawn to exit
    maxrss_mib: float              # kernel's peak resident set size of the process
    user_s: float = 0.0            # CPU time in user and system mode
    system_s: float = 0.0
    minor_faults: int = 0          # pages the kernel had to map in (e.g. memory given back and taken again)
    peaks_mib: dict[str, float] = field(default_factory=dict)  # sampled VmRSS, RssAnon, RssFile
    stdout: Path | None = None
    stderr: Path | None = None


def cpu_usage(done: Finished) -> dict[str, float]:
    """Wall, user and system seconds and minor page faults of a finished command."""
    return {"wall_s": round(done.wall, 3), "user_s": round(done.user_s, 3),
            "system_s": round(done.system_s, 3), "minor_faults": done.minor_faults}


class _RssSampler(threading.Thread):
    """Poll /proc/PID/status: the kernel's peak RSS does not say how much is file-backed."""

    KEYS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, pid: int, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peaks = dict.fromkeys(self.KEYS, 0.0)
        self.halt = threading.Event()

    def run(self) -> None:
        path = Path(f"/proc/{self.pid}/status")
        while not self.halt.is_set():
            try:
                text = path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, rest = line.partition(":")
                if key in self.peaks:
                    self.peaks[key] = max(self.peaks[key], int(rest.split()[0]) / 1024.0)
            self.halt.wait(self.period)


def run(cmd: list[str], name: str, logs: Path, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 900, sample_rss: bool = False) -> Finished:
    """Run ``cmd``, its output to ``logs/name.{out,err}``; raise CommandFailed on failure."""
    logs.mkdir(parents=True, exist_ok=True)
    if deadline is not None:
        if time.monotonic() >= deadline:
            raise CommandFailed(f"{name}: not started, the time limit of the suite is reached")
        timeout = min(timeout, deadline - time.monotonic())
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    full_env = {**os.environ, **(env or {})}
    with open(out, "wb") as fo, open(err, "wb") as fe:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=full_env, cwd=cwd)
        sampler = _RssSampler(proc.pid) if sample_rss else None
        if sampler:
            sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            # wait4 rather than wait: it also returns the child's resource usage
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler:
            sampler.halt.set()
            sampler.join()
    done = Finished(proc.pid, proc.returncode, started, wall, usage.ru_maxrss / 1024.0,
                    usage.ru_utime, usage.ru_stime, usage.ru_minflt,
                    dict(sampler.peaks) if sampler else {}, out, err)
    if done.returncode != 0 and wall >= timeout:
        raise CommandFailed(f"{name}: stopped after {wall:.0f} s (time limit)")
    if done.returncode != 0:
        tail = err.read_text(errors="replace").strip().splitlines()[-5:]
        raise CommandFailed(f"{name}: exit {done.returncode} after {wall:.1f} s: "
                            + " | ".join(tail))
    return done


def neurodl(args: list[str], name: str, logs: Path, **kwargs) -> Finished:
    """The app's command line, ``run.py ARGS``, with this Python."""
    return run([PYTHON, str(RUN_PY), *map(str, args)], name, logs, **kwargs)


def log_events(output_dir: Path, pid: int) -> list[tuple[float, str]]:
    """(time.time(), message) of each line of the file log the process ``pid`` wrote."""
    found = sorted(Path(output_dir, "logs").glob(f"*-{pid}.log"))
    if not found:
        raise FileNotFoundError(f"no log of process {pid} in {output_dir}/logs")
    events = []
    for line in found[-1].read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((when, match.group(2)))
    return events


def when(events: list[tuple[float, str]], pattern: str, last: bool = False) -> float:
    """Time of the first (or last) log line matching the regular expression ``pattern``."""
    hits = [t for t, message in events if re.search(pattern, message)]
    if not hits:
        raise LookupError(f"no log line matches {pattern!r}")
    return hits[-1] if last else hits[0]
