# -*- test-case-name: tests.test_metrics -*-
"""``--workers``: every process's metrics in one directory, so that one scrape sees them all.

Each process (the twistd one and each worker) writes its :class:`fwproxy.metrics.ProxyMetrics`
to prometheus_client's multiprocess files in a shared directory — ``counter_PID.db``,
``histogram_PID.db``, ``gauge_livesum_PID.db`` — once a second and when it stops
(:class:`SharedMetrics`). The process serving the admin listener reads them all with
prometheus_client's ``MultiProcessCollector`` (:class:`SharedCollector`), after writing its own:
counters and histograms are summed over the processes, the gauges of processes still alive too.
The directory is ``[admin] metrics_dir`` or a temporary one the twistd process makes; it must be
writable (a scratch volume under a read-only root) and belong to one proxy: the twistd process
empties it when it starts (:func:`prepare_directory`).

The files' format is prometheus_client's; this module alone writes it, through two names of
its ``mmap_dict`` module (``MmapedDict``, ``mmap_key``). ``tests/test_metrics.py`` writes with
them and reads back with the public ``MultiProcessCollector``, so a change of format fails there.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet.task import LoopingCall

from fwproxy.metrics import COUNTERS, GAUGES, HISTOGRAMS, TOTALS, TRANSACTIONS, ProxyMetrics

#: the environment variable the twistd process passes the directory to its workers in
METRICS_DIR_ENV = "FWPROXY_METRICS_DIR"

_GAUGE_FILE = "gauge_livesum"


def prepare_directory(path: str | None) -> tuple[str, bool]:
    """``(directory, made)``: ``path`` emptied of metrics files left by an earlier run, or a new
    temporary directory (``made``: the caller removes it when done)."""
    if path is None:
        return tempfile.mkdtemp(prefix="fwproxy-metrics-"), True
    for f in glob.glob(os.path.join(path, "*.db")):
        os.remove(f)
    return path, False


def remove_directory(path: str) -> None:
    """Remove a directory :func:`prepare_directory` made, with the files in it."""
    for f in glob.glob(os.path.join(path, "*.db")):
        os.remove(f)
    try:
        os.rmdir(path)
    except OSError:
        pass  # something else was put there: leave it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead(path: str) -> None:
    """Remove the gauge files of processes that have ended (a worker that was killed had no
    chance to): their connections are not open any more. Their counters stay counted."""
    for f in glob.glob(os.path.join(path, f"{_GAUGE_FILE}_*.db")):
        pid = os.path.basename(f)[len(_GAUGE_FILE) + 1 : -3]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass


class SharedMetrics:
    """Writes one process's metrics to the shared directory.

    :param clock: the reactor (for the once-a-second write).
    :param pid: names this process's files (default: its process id).
    """

    def __init__(
        self,
        metrics: ProxyMetrics,
        directory: str,
        clock: Any,
        pid: int | None = None,
        interval: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self._files: dict[str, MmapedDict] = {}
        self._keys: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}
        self._loop = LoopingCall(self.write)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Write a last time, and remove this process's gauges (its connections are gone)."""
        if self._loop.running:
            self._loop.stop()
        self.write()
        for f in self._files.values():
            f.close()
        self._files.clear()
        try:
            os.remove(self._path(_GAUGE_FILE))
        except FileNotFoundError:
            pass

    def _path(self, kind: str) -> str:
        return os.path.join(self.directory, f"{kind}_{self.pid}.db")

    def _put(
        self,
        kind: str,
        metric: str,
        sample: str,
        doc: str,
        value: float,
        labels: tuple[str, ...] = (),
        values: tuple[str, ...] = (),
    ) -> None:
        f = self._files.get(kind)
        if f is None:
            f = self._files[kind] = MmapedDict(self._path(kind))
        k = (metric, sample, labels, values)
        key = self._keys.get(k)
        if key is None:
            key = self._keys[k] = mmap_key(metric, sample, list(labels), list(values), doc)
        f.write_value(key, float(value), 0.0)

    def write(self) -> None:
        """Write every number of this process (at most a few hundred: this is cheap)."""
        m = self.metrics
        name, doc = TRANSACTIONS
        for (result, method), n in m.transactions.items():
            self._put(
                "counter", name, name + "_total", doc, n, ("result", "method"), (result, method)
            )
        for attr, name, label, doc in COUNTERS:
            for value, n in getattr(m, attr).items():
                self._put("counter", name, name + "_total", doc, n, (label,), (value,))
        for attr, name, doc in TOTALS:
            self._put("counter", name, name + "_total", doc, getattr(m, attr))
        for attr, name, doc in HISTOGRAMS:
            h = getattr(m, attr)
            bounds = (*map(repr, h.bounds), "+Inf")
            for bound, n in zip(bounds, h.counts, strict=True):
                self._put("histogram", name, name + "_bucket", doc, n, ("le",), (bound,))
            self._put("histogram", name, name + "_sum", doc, h.sum)
        values = m.gauges()
        for index, name, doc in GAUGES:
            self._put(_GAUGE_FILE, name, name, doc, values[index])


class SharedCollector:
    """A prometheus_client collector of every process's metrics in ``directory``; ``own``,
    this process's writer, writes first so that this process's numbers are current."""

    def __init__(self, directory: str, own: SharedMetrics | None = None) -> None:
        self.directory = directory
        self.own = own

    def collect(self) -> Iterable[Metric]:
        if self.own is not None:
            self.own.write()
        forget_dead(self.directory)
        return MultiProcessCollector(None, path=self.directory).collect()
