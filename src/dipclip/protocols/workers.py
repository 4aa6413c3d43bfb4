"""Workers: take the next run of the plan that is neither finished nor claimed, until none is left.

Any number of workers, in this process, in ``--jobs N`` processes, started by hand on other machines that
share ``--out``, or as SLURM tasks, can work on one plan: each run folder is claimed on its own
(:func:`dipclip.engine.locking.claim`), so a run is executed once, a dead worker's run is taken over by the next
worker (it resumes from its checkpoint), and rerunning the command continues the sweep. A target of xd/dg waits
for its source run (finished by any worker); a failed source fails its targets. A run that fails records its
one-line error (``failed.json``) and the others go on; a later command retries it.

What a sweep prints (:class:`SweepProgress`): on a terminal one overall progress line (runs finished / total, the
current run, an ETA from the finished runs' durations); elsewhere (pipes, CI, SLURM logs) one plain line per run;
``output="quiet"`` only failures; each run's own lines (epochs, accuracies) only with ``output="verbose"``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

from ..backbones.loading import Backbone
from ..engine.locking import claim, claim_holder
from ..errors import DipclipError
from .config import ProtocolConfig
from .plan import Run, expand
from .run import RunExecutor, read_failure

POLL_SECONDS = 2.0
OUTPUTS = ("quiet", "normal", "verbose")


class SweepProgress:
    """Reports a sweep's runs: called as ``progress(kind, key, label, value)`` with ``kind`` one of ``start``,
    ``skip``, ``done`` (``value``: its seconds), ``failed`` (``value``: the error) and ``elsewhere``; ``key`` is the
    run's folder (a run several workers report is counted once)."""

    def __init__(self, total: int, output: str, log: Callable[[str], None], workers: int = 1,
                 terminal: bool | None = None, desc: str = "runs"):
        self.total, self.output, self.log, self.workers = total, output, log, max(1, workers)
        self.finished: set[str] = set()
        self.seconds: list[float] = []
        self.current = ""
        self.bar = None
        if output != "quiet" and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}")

    def eta(self) -> float | None:
        """Seconds left: the mean of the runs executed so far x the runs left, over the workers."""
        if not self.seconds:
            return None
        left = max(0, self.total - len(self.finished))
        return sum(self.seconds) / len(self.seconds) * left / self.workers

    def __call__(self, kind: str, key: str, label: str, value=None) -> None:
        new = kind in ("skip", "done", "failed") and key not in self.finished
        if new:
            self.finished.add(key)
        if kind == "done":
            self.seconds.append(float(value))
        eta = self.eta()
        if kind == "failed":
            line = f"{label}: FAILED: {value}"
        elif kind == "start":
            line = f"{label}: running" + ("" if eta is None else f", about {_duration(eta)} left")
        elif kind == "skip":
            line = f"{label}: done already (same settings), skipped"
        elif kind == "elsewhere":
            line = f"{label}: running in another worker, left to it"
        else:
            line = None  # done: the next run's line (or the summary) follows
        if self.bar is None:
            if line is not None and (kind == "failed" or self.output != "quiet"):
                self.log(line)
            return
        if kind == "failed":
            self.bar.write(line, file=sys.stderr)
        if kind == "start":
            self.current = label
        if new:
            self.bar.update(1)
        parts = [self.current] if self.current else []
        parts += [] if eta is None else [f"ETA {_duration(eta)}"]
        self.bar.set_postfix_str(", ".join(parts), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def work(config: ProtocolConfig, only: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
         backbone: Backbone | None = None, since: float | None = None, name: str = "", output: str | None = None,
         progress: Callable | None = None) -> dict:
    """Execute the plan's unfinished runs (only those whose folder, relative to ``OUT/{protocol}``, is in
    ``only``, when given), each under its own claim; returns ``{"done", "failed", "skipped", "elsewhere"}``
    counts. Failures recorded after ``since`` (default: now) are not retried: another worker of this sweep
    just failed them. ``output``: quiet, normal or verbose (default: normal, quiet when ``config.progress`` is
    off); ``progress``: where the runs are reported (default: a :class:`SweepProgress` of this call)."""
    config = config.validate()
    since = time.time() if since is None else since
    executor = RunExecutor(config, backbone=backbone, log=log)
    if output is not None:
        executor.output = output
    prefix = f"[{name}] " if name else ""
    runs = expand(config)
    wanted = set(only) if only is not None else None
    mine = [run for run in runs if wanted is None or run.folder in wanted]
    counts = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    pending = list(mine)
    if pending:
        executor.backbone  # noqa: B018 - a command without usable weights is refused once, not once per run
    total = len(mine)
    report = progress or SweepProgress(total, executor.output, executor.log)
    try:
        _work(executor, pending, since, report, prefix, counts, total)
    finally:
        if progress is None:
            report.close()
    return counts


def _work(executor: RunExecutor, pending: list[Run], since: float, report: Callable, prefix: str, counts: dict,
          total: int) -> None:
    while pending:
        progressed = False
        for run in list(pending):
            state = _try(executor, run, since, report, prefix, counts, total - len(pending) + 1, total)
            if state != "waiting":
                pending.remove(run)
                progressed = True
        if pending and not progressed:
            # what is left is claimed by live workers: independent runs are theirs; a target waits for its source
            waiting = [run for run in pending if run.source is not None and run.source.folder not in
                       {r.folder for r in pending}]
            held = [run for run in pending if run not in waiting]
            for run in held:
                if _running(executor, run):
                    pending.remove(run)
                    counts["elsewhere"] += 1
                    report("elsewhere", run.folder, f"{prefix}{run.label}")
            for run in waiting:
                if not _running(executor, run.source):  # nobody runs its source: it would wait forever
                    with claim(executor.folder(run)) as claimed:
                        if claimed:
                            error = (f"its source run {run.source.folder} is not finished and no worker runs it; "
                                     "run the whole plan")
                            executor.record_failure(run, error)
                            counts["failed"] += 1
                            report("failed", run.folder, f"{prefix}{run.label}", error)
                    pending.remove(run)
            if pending:
                time.sleep(POLL_SECONDS)


def _running(executor: RunExecutor, run: Run) -> bool:
    holder = claim_holder(executor.folder(run))
    return holder is not None and holder[0] == "running"


def _try(executor: RunExecutor, run: Run, since: float, report: Callable, prefix: str, counts: dict, index: int,
         total: int) -> str:
    """One attempt at ``run``: ``"finished"``, ``"failed"`` or ``"waiting"`` (claimed elsewhere, or a target
    whose source is not finished yet)."""
    label = f"{prefix}[{index}/{total}] {executor.config.protocol} {run.label}"
    if executor.verified(run) is not None:
        counts["skipped"] += 1
        report("skip", run.folder, label)
        return "finished"
    failure = read_failure(executor.folder(run))
    if failure is not None and float(failure.get("at", 0) or 0) >= since:
        return "failed"  # failed in this sweep by another worker: not retried now
    if run.source is not None:
        source_done = executor.finished(run.source)
        source_failure = read_failure(executor.folder(run.source))
        if source_done is None:
            if source_failure is not None and float(source_failure.get("at", 0) or 0) >= since:
                with claim(executor.folder(run)) as mine:
                    if mine:
                        error = f"its source run {run.source.folder} failed"
                        executor.record_failure(run, error)
                        counts["failed"] += 1
                        report("failed", run.folder, label, error)
                return "failed"
            return "waiting"
    with claim(executor.folder(run)) as mine:
        if not mine:
            return "waiting"
        if executor.finished(run) is not None:  # finished by another worker between our look and our claim
            counts["skipped"] += 1
            report("skip", run.folder, label)
            return "finished"
        report("start", run.folder, label)
        began = time.perf_counter()
        try:
            executor.execute(run)
        except DipclipError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one run's crash must not stop the sweep; named, recorded
            error = f"unexpected {type(exc).__name__}: {exc}"
        else:
            counts["done"] += 1
            report("done", run.folder, label, time.perf_counter() - began)
            return "finished"
        executor.record_failure(run, error)
        counts["failed"] += 1
        report("failed", run.folder, label, error)
        return "failed"


def _worker_main(config: ProtocolConfig, index: int, jobs: int, devices: Sequence[str] | None, since: float,
                 queue, threads: int | None = None, output: str | None = None) -> None:
    """A ``--jobs`` process: pinned to its device, and to ``threads`` CPU threads (default: its share of the
    cores); it reports its runs to the parent, which prints them, and ends with its counts."""
    import torch

    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices[index % len(devices)])
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // jobs))
    name = f"worker {index + 1}/{jobs}"

    def report(kind: str, key: str, label: str, value=None) -> None:
        queue.put(("event", kind, key, label, value))

    try:
        counts = work(config, log=lambda line: print(line, file=sys.stderr, flush=True), since=since, name=name,
                      output=output, progress=report)
    except DipclipError as exc:
        print(f"dipclip: error: [{name}] {exc}", file=sys.stderr, flush=True)
        counts = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0, "error": str(exc)}
    queue.put(("counts", counts))


def run_workers(config: ProtocolConfig, jobs: int, devices: Sequence[str] | None = None, threads: int | None = None,
                output: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """``jobs`` worker processes on this machine, each taking runs from the same plan; returns summed counts.
    On the CPU each gets ``threads`` threads (default ``cores // jobs``, so workers do not fight over cores).
    Their runs are reported here, as one :class:`SweepProgress` (``output``: quiet, normal or verbose)."""
    import multiprocessing

    output = output or ("normal" if config.progress else "quiet")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    since = time.time()
    processes = [context.Process(target=_worker_main, args=(config, i, jobs, devices, since, queue, threads, output))
                 for i in range(jobs)]
    for process in processes:
        process.start()
    progress = SweepProgress(len(expand(config.validate())), output,
                             log or (lambda line: print(line, file=sys.stderr, flush=True)), workers=jobs)
    results = []
    try:
        while len(results) < len(processes):
            message = queue.get()
            if message[0] == "counts":
                results.append(message[1])
            else:
                progress(*message[1:])
    finally:
        progress.close()
    for process in processes:
        process.join()
    total = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    for counts in results:
        for key in total:
            total[key] += counts.get(key, 0)
        if "error" in counts:
            raise DipclipError(counts["error"])
    return total
