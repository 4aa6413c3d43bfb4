"""Workers: take the next run of the plan that is neither finished nor claimed, until none is left.

Any number of workers, in this process, in ``--jobs N`` processes, started by hand on other machines that
share ``--out``, or as SLURM tasks, can work on one plan: each run folder is claimed on its own
(:func:`dipclip.engine.locking.claim`), so a run is executed once, a dead worker's run is taken over by the next
worker (it resumes from its checkpoint), and rerunning the command continues the sweep. A target of xd/dg waits
for its source run (finished by any worker); a failed source fails its targets. A run that fails records its
one-line error (``failed.json``) and the others go on; a later command retries it.
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


def work(config: ProtocolConfig, only: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
         backbone: Backbone | None = None, since: float | None = None, name: str = "") -> dict:
    """Execute the plan's unfinished runs (only those whose folder, relative to ``OUT/{protocol}``, is in
    ``only``, when given), each under its own claim; returns ``{"done", "failed", "skipped", "elsewhere"}``
    counts. Failures recorded after ``since`` (default: now) are not retried: another worker of this sweep
    just failed them."""
    config = config.validate()
    since = time.time() if since is None else since
    executor = RunExecutor(config, backbone=backbone, log=log)
    say = executor.log
    prefix = f"[{name}] " if name else ""
    runs = expand(config)
    wanted = set(only) if only is not None else None
    mine = [run for run in runs if wanted is None or run.folder in wanted]
    counts = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    pending = list(mine)
    if pending:
        executor.backbone  # noqa: B018 - a command without usable weights is refused once, not once per run
    total = len(mine)
    while pending:
        progressed = False
        for run in list(pending):
            state = _try(executor, run, since, say, prefix, counts, total - len(pending) + 1, total)
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
                    say(f"{prefix}{run.label}: running in another worker, left to it")
            for run in waiting:
                if not _running(executor, run.source):  # nobody runs its source: it would wait forever
                    with claim(executor.folder(run)) as claimed:
                        if claimed:
                            executor.record_failure(run, f"its source run {run.source.folder} is not finished and "
                                                         "no worker runs it; run the whole plan")
                            counts["failed"] += 1
                    pending.remove(run)
            if pending:
                time.sleep(POLL_SECONDS)
    return counts


def _running(executor: RunExecutor, run: Run) -> bool:
    holder = claim_holder(executor.folder(run))
    return holder is not None and holder[0] == "running"


def _try(executor: RunExecutor, run: Run, since: float, say, prefix: str, counts: dict, index: int,
         total: int) -> str:
    """One attempt at ``run``: ``"finished"``, ``"failed"`` or ``"waiting"`` (claimed elsewhere, or a target
    whose source is not finished yet)."""
    label = f"{prefix}[{index}/{total}] {executor.config.protocol} {run.label}"
    if executor.verified(run) is not None:
        counts["skipped"] += 1
        say(f"{label}: done already (same settings), skipped")
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
                        executor.record_failure(run, f"its source run {run.source.folder} failed")
                        counts["failed"] += 1
                return "failed"
            return "waiting"
    with claim(executor.folder(run)) as mine:
        if not mine:
            return "waiting"
        if executor.finished(run) is not None:  # finished by another worker between our look and our claim
            counts["skipped"] += 1
            return "finished"
        say(f"{label}: running")
        try:
            executor.execute(run)
        except DipclipError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one run's crash must not stop the sweep; named, recorded
            error = f"unexpected {type(exc).__name__}: {exc}"
        else:
            counts["done"] += 1
            return "finished"
        executor.record_failure(run, error)
        counts["failed"] += 1
        say(f"{label}: FAILED: {error}")
        return "failed"


def _worker_main(config: ProtocolConfig, index: int, jobs: int, devices: Sequence[str] | None, since: float,
                 queue) -> None:
    """A ``--jobs`` process: pinned to its device, or to its share of the CPU threads."""
    import torch

    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices[index % len(devices)])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)
    name = f"worker {index + 1}/{jobs}"
    try:
        counts = work(config, log=lambda line: print(line, file=sys.stderr, flush=True), since=since, name=name)
    except DipclipError as exc:
        print(f"dipclip: error: [{name}] {exc}", file=sys.stderr, flush=True)
        counts = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0, "error": str(exc)}
    queue.put(counts)


def run_workers(config: ProtocolConfig, jobs: int, devices: Sequence[str] | None = None) -> dict:
    """``jobs`` worker processes on this machine, each taking runs from the same plan; returns summed counts.
    On the CPU each gets ``cores // jobs`` threads, so workers do not fight over cores."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    since = time.time()
    processes = [context.Process(target=_worker_main, args=(config, i, jobs, devices, since, queue))
                 for i in range(jobs)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    total = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    for counts in results:
        for key in total:
            total[key] += counts.get(key, 0)
        if "error" in counts:
            raise DipclipError(counts["error"])
    return total
