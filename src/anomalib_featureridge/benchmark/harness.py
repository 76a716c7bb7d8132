"""How a benchmark figure is taken, whatever is measured: the parts that keep figures honest and runs safe.

- :func:`interleaved_medians`: the runs compared are timed in alternation, so machine noise on a
  shared machine hits all of them alike, and the median drops the outliers that remain;
- :class:`PeakMemory`: resident memory sampled in a thread, because the peak of a fit lasts
  milliseconds and the process's high-water mark would carry everything done before;
- :func:`run_isolated`: one fresh process per measurement, so one model's allocations do not
  inflate the next one's peak and a crash (the out-of-memory killer) costs one row, not the run;
- :func:`read_rows` / :func:`row_appender`: rows reach the disk as soon as they are measured, so an
  interrupted run loses only the row in progress and a re-run can skip what is done.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def interleaved_medians(
    runs: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time of each run, timed in alternation so that machine noise hits all of them alike."""

    def timed(run: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(timed(run))
    return {name: statistics.median(values) for name, values in samples.items()}


class PeakMemory:
    """Peak resident set size of this process between ``start`` and ``stop``, sampled in a thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss_bytes() -> int:
        """Current resident memory from /proc (Linux); 0 where it cannot be read."""
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * 4096
        except OSError:
            return 0

    def _sample(self) -> None:
        while self._running.is_set():
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())
            time.sleep(self.interval_s)

    def start(self) -> None:
        """Begin sampling from the current resident size."""
        self.peak_bytes = self.rss_bytes()
        self._running.set()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """End sampling; return the peak in MiB."""
        self._running.clear()
        if self._thread is not None:
            self._thread.join()
        return max(self.peak_bytes, self.rss_bytes()) / 2**20


class RowFailedError(RuntimeError):
    """A measurement in its own process failed; the message says how."""


def describe(error: BaseException) -> str:
    """An exception as one line of a CSV cell."""
    return f"{type(error).__name__}: {error}".replace("\n", " ")[:300]


def _exit_when_parent_is_gone() -> None:
    """Stop the measuring process as soon as the process that started it is gone (killed, not just interrupted)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _run_in_child(sender: Any, start_method: str, function: Callable[..., Any], arguments: tuple) -> None:
    """Body of the measuring process: send back the rows, or what went wrong (with the traceback on stderr).

    A spawned process would spawn its data-loader workers too, each re-importing torch and anomalib
    inside the timed fit; they are started the parent's way instead, as in an ordinary run.
    """
    multiprocessing.set_start_method(start_method, force=True)
    threading.Thread(target=_exit_when_parent_is_gone, daemon=True).start()
    try:
        outcome = ("rows", function(*arguments))
    except Exception as error:  # any failure of one row becomes that row's error in the parent
        traceback.print_exc()
        outcome = ("error", describe(error))
    sender.send(outcome)
    sender.close()


def run_isolated(function: Callable[..., Any], *arguments: object) -> Any:
    """``function(*arguments)`` in a fresh (spawned) process; raise RowFailedError if it fails or dies.

    ``function`` and its arguments must pickle (a module-level function). Interrupting or killing
    the caller stops the measuring process too.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    start_method = multiprocessing.get_start_method()
    child = context.Process(target=_run_in_child, args=(sender, start_method, function, arguments))
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:  # the child died without a word
        outcome = None
    except BaseException:  # an interrupt of the parent stops the measurement too
        child.kill()
        raise
    finally:
        child.join()
    if outcome is None:
        code = child.exitcode or 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        hint = " (most often the out-of-memory killer)" if code == -signal.SIGKILL else ""
        raise RowFailedError(f"the measuring process {how}{hint}")
    kind, value = outcome
    if kind == "error":
        raise RowFailedError(value)
    return value


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows already measured (none when the file does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@contextmanager
def row_appender(path: Path, fields: Sequence[str]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function that appends one row to ``path`` and flushes it to disk at once (header for a new file).

    Each row reaches the disk before the next measurement starts, so a crash or a kill loses only
    the one in progress.
    """
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)

        def append(row: dict[str, Any]) -> None:
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())

        if new_file:
            writer.writeheader()
        yield append
