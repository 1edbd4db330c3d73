"""Where a run's tasks execute: in the driver (``serial``), in a local process pool (``local``,
the default) or on a Ray cluster (``ray``).

A task is a picklable call ``fn(task)`` of a module-level function (a cell's image shard,
:mod:`benchmark.shards`); it returns plain data, which comes back to the driver.  Only the
driver writes cells.  Every executor gives a task ``threads`` torch intra-op threads, so the
same ``threads`` gives the same numbers whichever executor runs it (oneDNN convolutions round
differently with another thread count, by about 1e-6 dB).

``submit`` returns a :class:`concurrent.futures.Future`.  A worker process that dies (killed,
out of memory) fails its task with ``BrokenProcessPool`` (local) or a worker-died error (Ray);
both executors retry the task, up to ``retries`` times, so a kill costs only the shards that
were running.  The local pool is rebuilt after a death: Python's pool fails every task in
flight when one of its workers dies, and those tasks are retried too.
"""
from __future__ import annotations

import contextvars
import hashlib
import multiprocessing
import os
import tempfile
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from benchmark.runtime import prepare_cpu

EXECUTORS = ("serial", "local", "ray")
DEFAULT_EXECUTOR = "local"
#: retries of a task whose worker died
RETRIES = 2


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_split(executor: str, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker): the pool fills the machine's cores without oversubscribing
    them.  Measured on a 2-core machine (docs/scale-out.md, table1): 2 workers x 1 thread were
    the fastest split, ahead of a pool of 1 x 2 and of the serial 2-thread run, so a worker gets
    one thread unless asked for more."""
    cores = cpu_count()
    if executor == "serial":
        return 1, threads or torch.get_num_threads()
    threads = threads or 1
    workers = workers or max(1, cores // threads)
    return workers, threads


#: this worker's BLAS / OpenMP pool limits (threadpoolctl), kept for the worker's life
_POOLS = None


def _init_worker(threads: int) -> None:
    """A worker starts as the CLI does (denormals flushed, the allocator tuned: the same numbers
    and speed), with ``threads`` torch threads."""
    global _POOLS
    prepare_cpu()
    torch.set_num_threads(threads)
    _POOLS = threadpool_limits(limits=threads)  # numpy's BLAS (scikit-learn in GMM) too


class _DriverThreads:
    """The driver's own work (preparing cells, detecting on derained frames) runs with the tasks'
    thread count, torch's and the BLAS libraries' alike, so that it gives the same numbers under
    every executor; restored on close."""

    threads: int

    def _pin(self) -> None:
        self._before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._pools = threadpool_limits(limits=self.threads)

    def _unpin(self) -> None:
        torch.set_num_threads(self._before)
        self._pools.restore_original_limits()


class SerialExecutor(_DriverThreads):
    """Runs each task in the driver, one after another, when it is submitted (today's runs)."""

    name = "serial"

    def __init__(self, threads: int | None = None):
        self.workers, self.threads = default_split("serial", 1, threads)
        self._pin()

    def submit(self, fn, task) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(task))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def close(self) -> None:
        self._unpin()


class LocalExecutor(_DriverThreads):
    """A process pool (spawned workers, ``threads`` torch threads each) that retries the tasks
    of a worker that died."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int | None = None, retries: int = RETRIES):
        self.workers, self.threads = default_split("local", workers, threads)
        self.retries = retries
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self.restarts = 0
        self._pin()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))

    def submit(self, fn, task) -> Future:
        outer: Future = Future()
        self._submit(fn, task, outer, 0)
        return outer

    def _submit(self, fn, task, outer: Future, attempt: int) -> None:
        with self._lock:
            pool = self._pool
            try:
                inner = pool.submit(fn, task)
            except BrokenProcessPool:
                pool = self._replace(pool)
                inner = pool.submit(fn, task)

        def done(f: Future) -> None:
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool) and attempt < self.retries:
                with self._lock:
                    self._replace(pool)
                self._submit(fn, task, outer, attempt + 1)
            elif exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(f.result())

        inner.add_done_callback(done)

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A new pool in place of ``broken`` (once, however many of its tasks report it); call with the lock held."""
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self.restarts += 1
        return self._pool

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._unpin()


class RayExecutor(_DriverThreads):
    """Tasks on a Ray cluster: ``address`` (``ray start --head`` prints it) or a local cluster of
    ``workers`` CPUs started here.  A task asks for ``threads`` CPUs and, with ``device`` cuda,
    one GPU; Ray retries a task whose worker died (``max_retries``)."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int | None = None, address: str | None = None,
                 retries: int = RETRIES, gpu: bool = False):
        try:
            import ray  # noqa: PLC0415 - an optional extra: pip install .[ray]
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install '.[ray]'") from None
        self._ray = ray
        self.workers, self.threads = default_split("ray", workers, threads)
        self._started = not ray.is_initialized()
        if self._started:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, log_to_driver=False)
        self.retries = retries
        self._remote = ray.remote(_ray_task).options(num_cpus=self.threads, num_gpus=1 if gpu else 0,
                                                       max_retries=retries, retry_exceptions=False)
        self._pin()

    def submit(self, fn, task) -> Future:
        return self._remote.remote(fn, task, self.threads).future()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
        self._unpin()


def _ray_task(fn, task, threads: int):
    _init_worker(threads)
    return fn(task)


def make_executor(name: str = DEFAULT_EXECUTOR, workers: int | None = None, threads: int | None = None,
                  address: str | None = None, gpu: bool = False):
    """The executor ``name`` (:data:`EXECUTORS`); ``address`` is for Ray only."""
    if address and name != "ray":
        raise ValueError("--address is for --executor ray")
    if name == "serial":
        return SerialExecutor(threads)
    if name == "local":
        return LocalExecutor(workers, threads)
    if name == "ray":
        return RayExecutor(workers, threads, address, gpu=gpu)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


class ResultsLock:
    """An exclusive lock on a results folder for one writing run on this machine; a second run is
    refused with a clear message instead of interleaving its writes.  The lock file lies in the
    temporary folder (named by a hash of the results folder's path), so that a run adds no file
    to the results."""

    def __init__(self, results: Path):
        self.results = Path(results).resolve()
        digest = hashlib.sha256(str(self.results).encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"resguide-results-{digest}.lock"
        self._lock = None

    def __enter__(self):
        self._lock = FileLock(str(self.path), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise BlockingIOError(f"another run is writing to {self.results} (it holds {self.path}); wait for it "
                                  "to finish, or give this run another --results folder") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


class Progress:
    """One progress display for every task of a run: a bar in images (or frames) whose total
    grows as cells hand out their shards, advanced as each shard comes back."""

    def __init__(self, enabled: bool, unit: str = "img", desc: str = "images"):
        self._bar = tqdm(total=0, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._bar.total += n
            self._bar.refresh()

    def done(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def parallel(executor) -> bool:
    """Whether ``executor`` runs tasks outside this process (not None, not serial)."""
    return executor is not None and executor.name != "serial"


def gather(executor, fn, tasks: list, progress: Progress | None = None, size=lambda t: 1) -> list:
    """Run ``fn`` on every task through ``executor``; the results in task order.  Raises the
    first task's error after every task has ended (so no worker is left writing)."""
    if progress is not None:
        progress.add(sum(size(t) for t in tasks))
    futures = []
    for t in tasks:
        fut = executor.submit(fn, t)
        if progress is not None:
            fut.add_done_callback(lambda f, n=size(t): progress.done(n))
        futures.append(fut)
    wait(futures)
    return [f.result() for f in futures]


def concurrently(fn, items: list, executor) -> list:
    """``[fn(x) for x in items]``; with a parallel executor each call runs in its own driver
    thread (it prepares its cell, then waits on its shards), in this thread's context (so
    :func:`models.provider.training_allowed` holds there too).  Results in item order."""
    if not parallel(executor) or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items)), thread_name_prefix="cell") as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, x) for x in items]
        return [f.result() for f in futures]
