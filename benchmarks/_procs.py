"""Child processes for the driver: the emulator and one contender, both speaking JSON lines."""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable


class BenchError(RuntimeError):
    """A child process failed, hung, or answered something unexpected."""


class JsonProcess:
    """A child that writes one JSON object per stdout line and reads commands on stdin.

    A thread pumps stdout into a queue, so every read has a timeout; stderr goes to a temp
    file whose tail is shown when the child fails.
    """

    def __init__(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.label = label
        self._stderr = tempfile.TemporaryFile("w+")
        source = os.environ if env is None else env
        env = {k: v for k, v in source.items() if not k.startswith("FAL_")}
        self._popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self._popen.stdin is not None
        self._popen.stdin.write(line + "\n")
        self._popen.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; BenchError when the child exits or stays silent too long."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.label}: no answer in {timeout:.0f} s{self._tail()}") from None
        if line is None:
            code = self._popen.wait()
            raise BenchError(f"{self.label} exited with {code}{self._tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"{self.label}: {answer['error']}")
        return answer

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def _tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-3000:].strip()
        return f":\n{text}" if text else ""

    def close(self) -> None:
        """Ask the child to quit (end of stdin), then make sure it is gone."""
        try:
            assert self._popen.stdin is not None
            self._popen.stdin.close()
        except OSError:
            pass
        try:
            self._popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_emulator(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[JsonProcess, dict[str, Any]]:
    """Start ``_emulator_proc.py``; returns it and its URLs and key once it listens.

    ``env``: the child's environment (default this process's), e.g. another PYTHONPATH.
    """
    proc = JsonProcess("emulator", [PYTHON, str(HERE / "_emulator_proc.py"), *args], env)
    try:
        return proc, proc.receive(timeout)
    except BaseException:
        proc.close()
        raise


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has been busy, and of it stolen by the hypervisor."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return math.nan, math.nan
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def wait_for_quiet(cores: float, timeout: float, window: float = 0.5) -> float:
    """Wait until the machine stays below ``cores`` busy cores for one ``window``.

    Other processes (a test suite, a build) skew every figure; a round started in a quiet
    moment is more likely to stay quiet. Gives up after ``timeout`` seconds. Returns the busy
    cores of the last window.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy, _ = machine_cpu()
        time.sleep(window)
        load = (machine_cpu()[0] - busy) / window
        if math.isnan(load) or load < cores or time.monotonic() > deadline:
            return load


def warm_memory(folder: Path, size: int) -> None:
    """Write and delete ``size`` bytes in ``folder``, so a round's files land in warm memory.

    On a VM with free page reporting (virtio-balloon; Firecracker here), memory left free for
    about 2 s goes back to the host, and the next page-cache pages written are faulted in
    again: 400 MB of files then cost 3-5 ms more kernel time per 4 MB file, for whichever
    contender happens to write after a pause. Freed just before "go", these pages are the
    ones the round's writes reuse, the same for every contender.
    """
    block = bytes(1 << 20)
    scratch = folder / "warm-memory.scratch"
    with open(scratch, "wb") as file:
        for _ in range(-(-size // len(block))):
            file.write(block)
    scratch.unlink()


def run_contender(spec: dict[str, Any], emulator_args: list[str], timeout: float) -> dict[str, Any]:
    """One timed round of one contender against a fresh emulator.

    Returns the contender's report plus the emulator's counters just before the timed round
    (``before``) and its counters and job timestamps just after it (``after``), each with the
    machine's busy and stolen CPU seconds (``machine_busy``, ``machine_steal``), so that load
    from other processes during the round shows up in the results.
    """
    argv = [PYTHON, str(HERE / "_contenders.py"), json.dumps(spec)]
    with JsonProcess(spec["contender"], argv) as child:  # imports while the emulator starts
        emulator, urls = start_emulator(emulator_args, timeout)
        with emulator:
            child.send(json.dumps(urls))
            child.receive(timeout)  # ready: set up and warmed up
            if spec.get("download_dir") and spec.get("prewarm_bytes"):
                warm_memory(Path(spec["download_dir"]), spec["prewarm_bytes"])
            before = emulator.ask("counters", timeout)
            before["machine_busy"], before["machine_steal"] = machine_cpu()
            child.send("go")
            report = child.receive(timeout)
            after = emulator.ask("stats", timeout)
            after["machine_busy"], after["machine_steal"] = machine_cpu()
            emulator.send("quit")
    return {**report, "before": before, "after": after}
