"""`scan --engine ray`: Ray workers decode and score; this process does everything that writes.

The split follows the peers that scan at cluster scale (NeMo Curator, img2dataset): workers
only read, and the results are applied in one place.

- Workers (Ray actors, pipeline/engines/ray_worker.ScoreWorker): each gets the model once (its files' bytes, put in
  the object store once), rebuilds it, checks that its config and fingerprint are the driver's,
  and then decodes files with imgclean's own decoder (its statuses: unreadable, too_large,
  unsupported) and scores them. Paths travel as bytes, so names need not be UTF-8. A worker
  never writes, moves or caches anything.
- The driver (:class:`RayEngine`, plugged into pipeline/scan/scanner.Scorer.scan) keeps the walk, the
  lock, the cache (only misses are sent out; results are cached here), the report, the review
  page and every move through the quarantine and its journal: records come back into the same
  record -> apply path as the local engine and `imgclean apply`, in walk order.
- Failures: a dead worker is restarted by Ray and its batch retried (max_restarts,
  max_task_retries); results are matched to the batch sent by path, so a retried batch counts
  once, and a file moves at most once whatever a worker does. A batch that kills its worker
  RETRIES + 1 times is scored again one file at a time on a worker of its own: a file that kills
  it alone ends unreadable, as with the local engine's decode processes, and transient (never
  cached: the next scan tries it again). Any other failure stops
  the scan with one error line (the records applied so far stay consistent).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass

from ... import data, tuning
from .base import Outcome
from .ray_worker import RayEngineError, ScoreWorker  # noqa: F401  (ScoreWorker: the actor class, public here)

log = logging.getLogger(__name__)

# Batches queued per worker: one running, one waiting, so a worker never idles between batches.
IN_FLIGHT_PER_WORKER = 2
# How long a cluster address may take to accept a connection.
CONNECT_TIMEOUT_S = 10.0
# The message of a file that killed its worker on its own (the local engine's decode workers say
# the same of a file that kills them).
DIED = "the Ray worker died while decoding or scoring this file alone (killed, out of memory, or a crash in the image library)"
INSTALL_HINT = "--engine ray needs Ray: pip install 'imgclean[ray]' (the same Ray version as the cluster's)"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray for this scan; "auto" or host:port: join one
    workers: int = 0  # 0: one per CPU of the cluster (per GPU share with gpus_per_worker)
    gpus_per_worker: float = 0.0  # > 0: workers score on CUDA, this share of a GPU each


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayEngineError(INSTALL_HINT) from None
    return ray


def make_engine(scorer, options: "RayOptions | None" = None, device: str = "cpu") -> "RayEngine":
    """The registry's factory (engines/registry.py): workers score on CUDA when the options give
    each a GPU share, whatever `device` the scanning process has."""
    return RayEngine(scorer, options or RayOptions())


@dataclass
class _Batch:
    ref: object  # ObjectRef of ScoreWorker.score
    worker: int
    paths: list[bytes]


class RayEngine:
    """The engine pipeline/scan/scanner.Scorer.scan sends its cache misses to; a context manager that
    joins (or starts) Ray and its workers, and leaves both as it found them."""

    def __init__(self, scorer, options: RayOptions):
        self.scorer = scorer
        self.options = options
        # Tries of a batch beyond the first when its worker dies, how long workers may take to
        # start (a cluster that cannot place them would otherwise wait forever), the test hook.
        self.tuning = tuning.current()
        self.ray = None
        self.started_ray = False
        self.workers: list = []
        self.files_ref = None
        self._worker_class = None
        self._restore_printing = None
        self.in_flight: list[int] = []
        self.duplicates = 0  # results a worker sent twice (ignored)

    # ------------------------------------------------------------------ start and stop
    def __enter__(self) -> "RayEngine":
        self.ray = import_ray()
        return self

    def _start(self) -> None:
        """Join (or start) Ray and start the workers: at the first batch to score, so a rescan
        that the cache answers whole never starts a cluster."""
        self._connect(self.ray)
        self._start_workers(self.ray)

    def _connect(self, ray) -> None:
        self._restore_printing = route_ray_messages_to_log()
        if ray.is_initialized():  # a program that runs its own Ray (the Python API): use it, leave it up
            return
        address = self.options.address
        check_reachable(address)
        handlers = _signal_handlers()
        try:
            ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RayEngineError(f"cannot start or reach {where}: {' '.join(str(exc).split())[:300]}") from None
        finally:
            # ray.init installs its own SIGTERM handler (a stack dump, then death); the scan's
            # stop flag must keep its signals: finish the file in flight, report, exit 143.
            _restore_signal_handlers(handlers)
        self.started_ray = True

    def _count(self, ray) -> int:
        if self.options.workers:
            return self.options.workers
        resources = ray.cluster_resources()
        gpus = self.options.gpus_per_worker
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) / gpus))
        return max(1, int(resources.get("CPU", 1)))

    def _start_workers(self, ray) -> None:
        from ...store.artifact import read_model_files

        gpus = self.options.gpus_per_worker
        # Shipped once: every worker (and a restarted one) reads the one copy, held here until the end.
        self.files_ref = ray.put(read_model_files(self.scorer.bundle.path))
        self._worker_class = ray.remote(ScoreWorker)
        remote = self._worker_class.options(num_cpus=1, num_gpus=gpus, max_restarts=-1, max_task_retries=self.tuning.ray_retries)
        count = self._count(ray)
        self._check_capacity(ray, count, gpus)
        self.workers = [remote.remote(*self._worker_args("cuda" if gpus > 0 else "cpu")) for _ in range(count)]
        self.in_flight = [0] * len(self.workers)
        self._wait_ready(self.workers)

    def _wait_ready(self, workers: list) -> None:
        """Wait until every worker has loaded the model, and check it is the driver's."""
        ray, gpus = self.ray, self.options.gpus_per_worker
        try:
            prints = ray.get([w.ready.remote(self._files()) for w in workers], timeout=self.tuning.ray_start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RayEngineError(
                f"the Ray cluster did not start {len(workers)} workers ({gpus or 1:g} {'GPU' if gpus else 'CPU'} "
                f"each) within {self.tuning.ray_start_timeout_s:g} s; give fewer --ray-workers or check `ray status`"
            ) from None
        except ray.exceptions.RayError as exc:
            raise RayEngineError(f"a Ray worker could not load the model: {_cause(exc)}") from None
        if any(p != self.scorer.bundle.fingerprint for p in prints):
            raise RayEngineError("a Ray worker loaded another model than the driver's")

    def _worker_args(self, device: str) -> tuple:
        scorer = self.scorer
        return (scorer.bundle.config, scorer.method, scorer.batch_size, device, self.tuning.ray_test_kill)

    def _files(self) -> list:
        """The model's files as workers take them: the one object-store copy, by reference."""
        return [self.files_ref]

    def _check_capacity(self, ray, count: int, gpus: float) -> None:
        """Workers the cluster cannot place: an error at once for the local Ray this scan started
        (it cannot grow), a warning for a cluster (an autoscaler may add nodes; tuning's ray_start_timeout_s)."""
        have = ray.cluster_resources()
        need = {"CPU": float(count), **({"GPU": count * gpus} if gpus > 0 else {})}
        short = [f"{n:g} {kind}s, the cluster has {have.get(kind, 0):g}" for kind, n in need.items()
                 if n > have.get(kind, 0) + 1e-9]
        if not short:
            return
        what = f"{count} Ray workers need {' and '.join(short)}"
        if self.started_ray and self.options.address is None and not os.environ.get("RAY_ADDRESS"):
            raise RayEngineError(f"{what}; give fewer --ray-workers (the local Ray this scan started cannot grow)")
        log.warning("%s; waiting up to %g s for the cluster to place them", what, self.tuning.ray_start_timeout_s)

    def __exit__(self, *exc) -> None:
        ray, workers, self.workers, self.files_ref = self.ray, self.workers, [], None
        if ray is None or not (workers or self.started_ray or self._restore_printing):
            return
        for w in workers:
            try:
                ray.kill(w)
            except Exception:  # already gone with its cluster
                pass
        try:
            if self.started_ray:
                self.started_ray = False
                ray.shutdown()
        finally:
            restore, self._restore_printing = self._restore_printing, None
            if restore is not None:
                restore()

    # ------------------------------------------------------------------ the engine protocol
    def ahead(self) -> int:
        return IN_FLIGHT_PER_WORKER * max(1, len(self.workers))

    def submit(self, entries: list[data.FileEntry]) -> _Batch:
        if not self.workers:
            self._start()
        worker = min(range(len(self.workers)), key=self.in_flight.__getitem__)
        paths = [os.fsencode(e.fspath) for e in entries]
        self.in_flight[worker] += 1
        return _Batch(self.workers[worker].score.remote(self._files(), paths), worker, paths)

    def collect(self, entries: list[data.FileEntry], batch: _Batch) -> list[Outcome]:
        """The outcomes of `entries`, matched by path to what the worker sent back: a path it
        sent twice counts once, a path it did not send stops the scan."""
        ray = self.ray
        try:
            paths, outcomes = ray.get(batch.ref)
        except ray.exceptions.RayActorError:
            # The batch killed its worker ray_retries + 1 times: find the file that does it.
            log.warning("a Ray worker died %d times on a batch of %d files (first %r); scoring them one at a time",
                        self.tuning.ray_retries + 1, len(entries), os.fsdecode(batch.paths[0]))
            return self._one_at_a_time(batch.paths)
        except ray.exceptions.RayError as exc:
            raise RayEngineError(
                f"a Ray worker failed {self.tuning.ray_retries + 1} times scoring a batch of {len(entries)} files "
                f"(first {os.fsdecode(batch.paths[0])!r}): {_cause(exc)}"
            ) from None
        finally:
            self.in_flight[batch.worker] -= 1
        return match_outcomes(batch.paths, paths, outcomes, self)

    def _one_at_a_time(self, paths: list[bytes]) -> list[Outcome]:
        """Score each path alone on a worker of its own (no restart, no retry, checked alive
        before each file), so a death is that file's: it ends unreadable (DIED), as a file that
        kills a local decode worker does. The isolating worker takes no CPU or GPU from the
        pool (it runs while the scan waits for it) and scores on the CPU."""
        ray = self.ray
        out: list[Outcome] = []
        worker = None
        try:
            for path in paths:
                if worker is None:
                    worker = self._new_worker(num_cpus=0, num_gpus=0, max_restarts=0, max_task_retries=0,
                                              device="cpu")
                try:
                    got, result = ray.get(worker.score.remote(self._files(), [path]))
                except ray.exceptions.RayActorError:
                    out.append(Outcome(data.UNREADABLE, data.TransientMessage(DIED), -1, -1, None))  # never cached
                    worker = None
                    continue
                out.extend(match_outcomes([path], got, result, self))
        finally:
            if worker is not None:
                ray.kill(worker)
        return out

    def _new_worker(self, device: str, **options):
        """A worker started with these options, waited for until it has loaded the model."""
        worker = self._worker_class.options(**options).remote(*self._worker_args(device))
        self._wait_ready([worker])
        return worker

    def cancel(self, batch: _Batch) -> None:
        try:
            self.ray.cancel(batch.ref)
        except Exception:  # finished or gone already
            pass


def _signal_handlers() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def route_ray_messages_to_log():
    """Send what Ray's driver prints about its workers (e.g. "(raylet) A worker died ...", which
    Ray writes to stdout) to imgclean's log, so stdout keeps only the scan's own output (its
    --json). Returns the function that undoes it; a Ray without that hook is left as it is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return None
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return None

    def to_log(data, ignore_prefix=False):
        for line in data.get("lines") or ():
            log.warning("ray (%s): %s", data.get("pid", ""), " ".join(str(line).split())[:500])

    ray_worker.print_to_stdstream = to_log

    def restore() -> None:
        ray_worker.print_to_stdstream = original

    return restore


def check_reachable(address: str | None) -> None:
    """Fail fast, with one line, when a host:port cluster address does not answer: ray.init
    itself would retry for minutes."""
    import socket

    if address is None or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayEngineError(f"--ray-address {address!r} is not host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayEngineError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is `ray start --head` running there?"
        ) from None


def match_outcomes(sent: list[bytes], paths: list[bytes], outcomes: list, counter=None) -> list[Outcome]:
    """The outcome of each path in `sent`, in its order, from a worker's (paths, outcomes)."""
    by_path: dict[bytes, Outcome] = {}
    for path, outcome in zip(paths, outcomes, strict=True):
        if path in by_path:
            if counter is not None:
                counter.duplicates += 1
            continue
        if len(outcome) != len(Outcome._fields):
            raise RayEngineError(f"a Ray worker sent an outcome of {len(outcome)} fields for {os.fsdecode(path)!r}")
        by_path[path] = Outcome._make(outcome)
    missing = [p for p in sent if p not in by_path]
    if missing:
        raise RayEngineError(f"a Ray worker sent no result for {len(missing)} files (first {os.fsdecode(missing[0])!r})")
    return [by_path[p] for p in sent]


def _cause(exc: BaseException) -> str:
    """The one-line reason of a Ray error (the worker's own exception when there is one)."""
    inner = getattr(exc, "cause", None)
    text = str(inner if isinstance(inner, BaseException) else exc)
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
