"""A protocol's unfinished runs as a SLURM job array, through submitit.

One array task per group of runs that share image work (the same dataset and seed: one few-shot selection,
one set of training views and test features for every method), each calling
:func:`dipclip.protocols.workers.work` on its group's folders. Every run is claimed on its own, so array tasks,
local ``--jobs`` workers and a resubmission of the same command never run one twice, and a task that dies
leaves its runs to the next command. An xd/dg target whose source run is not finished yet goes into a second
array that starts once the first has ended (``afterany``); a source that failed makes its targets fail with
a line naming it. The launcher knows runs, never methods: the tasks pickle only the protocol's config and
folder names. submitit's files (the pickled calls, each task's stdout and stderr) go to
``OUT/{protocol}/.slurm/{job id}/``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...api import METRICS_NAME
from ...errors import DipclipError
from ..config import ProtocolConfig

POLL_MAX_S = 15.0  # the longest pause between two looks at the queue while following the tasks
RESULT_GRACE_S = 10.0  # how long a task's result may lag behind its leaving the queue (shared filesystems)
INSTALL_HINT = "--launcher slurm needs submitit: pip install dipclip[slurm]"
# sbatch options the launcher sets itself (the array, its logs), and those that have a flag of their own
RESERVED = {"array": None, "output": None, "error": None, "open-mode": None, "signal": None,
            "partition": "--slurm-partition", "time": "--slurm-time", "gpus-per-task": "--slurm-gpus-per-task",
            "cpus-per-task": "--slurm-cpus-per-task"}


@dataclass
class SlurmOptions:
    partition: str | None = None  # None: the cluster's default partition
    time: int | None = None  # minutes per array task; None: the partition's default limit
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    array_parallelism: int | None = None  # array tasks running at once; None: as many as SLURM allows
    extra: dict[str, str | bool] = field(default_factory=dict)  # any sbatch option: {"mem": "32G", "qos": "high"}
    env: dict[str, str] = field(default_factory=dict)  # exported in every task before Python starts
    job_name: str | None = None  # default: dipclip-{protocol}

    def __post_init__(self) -> None:
        for name in ("time", "gpus_per_task", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                flag = "--slurm-" + name.replace("_", "-")
                raise DipclipError(f"{flag} must be a whole number >= 1, got {value!r}")
        extra = {}
        for key, value in self.extra.items():
            option = str(key).strip().lstrip("-").replace("_", "-")
            if not option:
                raise DipclipError(f"--slurm-option {key}={value}: the option name is empty; give KEY=VALUE, "
                                   "e.g. mem=32G")
            if option in RESERVED:
                own = RESERVED[option]
                raise DipclipError(f"--slurm-option {option} has a flag of its own: use {own}" if own else
                                   f"--slurm-option {option} is set by the launcher (the array, and its logs in "
                                   "OUT/PROTOCOL/.slurm); remove it")
            extra[option] = value
        self.extra = extra


def _submitit():
    try:
        import submitit
    except ImportError:
        raise DipclipError(INSTALL_HINT) from None
    return submitit


class _NoAccountingNoise(logging.Filter):
    """Clusters without accounting make every ``sacct`` call fail; submitit then reads ``squeue`` instead and
    warns on each poll. The fallback is fine, the warnings are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sacct" not in record.getMessage()


def run_group(config: ProtocolConfig, folders: list[str]) -> dict:
    """One array task: the group's unfinished runs, each under its own claim, on as many CPU threads as the
    task was given (a node's every core otherwise: tasks sharing a node would oversubscribe it)."""
    from ..workers import work

    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and int(cpus) > 0:
        import torch

        torch.set_num_threads(int(cpus))
    return work(config, only=folders, log=lambda line: print(line, file=sys.stderr, flush=True))


def unfinished(config: ProtocolConfig, runs: Sequence) -> list:
    """The runs whose folder holds no ``metrics.json`` (whether a finished one holds this command's settings is
    checked by the worker that meets it, and by the summary ``--wait`` prints)."""
    return [run for run in runs if not (config.root / run.folder / METRICS_NAME).is_file()]


def groups_of(runs: Sequence) -> list[list]:
    """Runs grouped by (dataset, seed), in plan order: the runs of a group share their images' features."""
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.seed), []).append(run)
    return list(groups.values())


def _label(group: Sequence) -> str:
    run = group[0]
    return f"{run.dataset} seed {run.seed}, {len(group)} run{'s' if len(group) > 1 else ''}"


def _executor(submitit, config: ProtocolConfig, options: SlurmOptions):
    folder = Path(os.path.abspath(config.root)) / ".slurm" / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    setup = [f"export {key}={shlex.quote(str(value))}" for key, value in options.env.items()]
    parameters = dict(job_name=options.job_name or f"dipclip-{config.protocol}", partition=options.partition,
                      time=options.time, gpus_per_task=options.gpus_per_task, cpus_per_task=options.cpus_per_task,
                      additional_parameters=dict(options.extra), setup=setup)
    if options.array_parallelism is not None:
        parameters["array_parallelism"] = options.array_parallelism
    executor.update_parameters(**parameters)
    return executor


def _submit_array(submitit, executor, config: ProtocolConfig, groups: list[list]) -> list:
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint; it is in the error
            return executor.map_array(run_group, [config] * len(groups), [[r.folder for r in g] for g in groups])
    except submitit.core.utils.FailedJobError as exc:
        lines = [line.strip().removeprefix("sbatch: error: ") for line in str(exc).splitlines() if line.strip()]
        reason = " / ".join(dict.fromkeys(lines)) or "no message"
        raise DipclipError(f"sbatch refused the job array: {reason}; check --slurm-partition, --slurm-time and "
                           "--slurm-option (`sinfo` lists the partitions and their limits)") from None


def _array_id(jobs: Sequence) -> str:
    return str(jobs[0].job_id).split("_")[0]


def submit(config: ProtocolConfig, runs: Sequence, options: SlurmOptions, wait: bool = False,
           log: Callable[[str], None] | None = None) -> str:
    """Submit ``runs``' unfinished ones as SLURM array tasks; the job id(s), comma-separated ("" when every run
    is finished). With ``wait``, follow the tasks to their end, naming each failed task (or task with failed
    runs) in one line; the runs' folders then say what finished (the summary names the rest)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    submitit = _submitit()
    if shutil.which("sbatch") is None:
        raise DipclipError("--launcher slurm needs SLURM's sbatch on PATH: run the command on the cluster's login "
                           "node, or use --launcher local")
    config.validate()
    todo = unfinished(config, runs)
    if not todo:
        log(f"{config.protocol}: all {len(runs)} runs are finished; nothing to submit")
        return ""
    pending = {run.folder for run in todo}
    groups = groups_of(todo)
    # a group holding a target whose source is still to run waits for the first array (which holds that source)
    waits = [any(getattr(run, "source", None) is not None and run.source.folder in pending for run in group)
             for group in groups]
    first_groups = [group for group, later in zip(groups, waits, strict=True) if not later]
    later_groups = [group for group, later in zip(groups, waits, strict=True) if later]
    submitit_logger = logging.getLogger("submitit")
    if not any(isinstance(f, _NoAccountingNoise) for f in submitit_logger.filters):
        submitit_logger.addFilter(_NoAccountingNoise())
    executor = _executor(submitit, config, options)
    arrays = [(first_groups, _submit_array(submitit, executor, config, first_groups))]
    if later_groups:
        after = _array_id(arrays[0][1])
        executor.update_parameters(additional_parameters={**options.extra, "dependency": f"afterany:{after}"})
        arrays.append((later_groups, _submit_array(submitit, executor, config, later_groups)))
    ids = [_array_id(jobs) for _, jobs in arrays]
    log(f"{config.protocol}: {len(todo)} unfinished run(s) of {len(runs)} submitted to SLURM as job "
        f"{ids[0]} ({len(first_groups)} array task(s), one per dataset and seed)"
        + (f" and job {ids[1]} ({len(later_groups)} task(s): targets, once job {ids[0]} has ended)" if later_groups
           else "")
        + f"; logs in {os.path.abspath(config.root / '.slurm')}")
    if wait:
        try:
            _follow(arrays, log)
        except KeyboardInterrupt:
            log(f"stopped following SLURM job {', '.join(ids)}; its tasks go on (scancel {' '.join(ids)} stops "
                f"them; dipclip status {config.root} follows them)")
            raise
    return ",".join(ids)


def _failure_line(exc: BaseException) -> str:
    """The one line that says why a task failed: the last line of its traceback, or submitit's first line."""
    lines = str(exc).splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("-----")]
    if len(marks) >= 2:
        trace = [line.strip() for line in lines[marks[0] + 1:marks[1]] if line.strip()]
        if trace:
            return trace[-1]
    return next((line.strip() for line in lines if line.strip()), type(exc).__name__)


def _queued(array_ids: Sequence[str]) -> set[str] | None:
    """The tasks of these arrays that SLURM still holds (pending, running, completing), as ``ARRAY_TASK``;
    ``None`` when ``squeue`` cannot say (the controller is busy or down: keep waiting)."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(array_ids)],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return set() if "Invalid job id" in result.stderr else None  # ids purged from the queue: all ended
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def _wait(entries: list[tuple[list, object]], array_ids: Sequence[str]) -> set[str]:
    """Wait until every task has a result or has left SLURM's queue without one (cancelled, out of time or
    memory, node failure); the latter's ids. Reads ``squeue`` itself: submitit's own wait asks ``sacct``, and
    on a cluster without accounting it would wait forever for a task that died without a result."""
    started = time.time()
    left_queue: dict[str, float] = {}
    while True:
        waiting = [job for _, job in entries if not job.paths.result_pickle.exists()]
        if not waiting:
            return set()
        queued = _queued(array_ids)
        now = time.time()
        if queued is not None:
            for job in waiting:
                if str(job.job_id) in queued:
                    left_queue.pop(str(job.job_id), None)
                else:
                    left_queue.setdefault(str(job.job_id), now)
        # a result may reach a shared filesystem a little after its task left the queue
        lost = {job_id for job_id, since in left_queue.items() if now - since > RESULT_GRACE_S}
        if lost and all(str(job.job_id) in lost for job in waiting):
            return lost
        time.sleep(min(POLL_MAX_S, 1.0 + (now - started) / 20))


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def _follow(arrays: list[tuple[list[list], list]], log: Callable[[str], None]) -> dict:
    """Wait for every task; one line per failed task (or task with failed runs); totals."""
    entries = [(group, job) for groups, jobs in arrays for group, job in zip(groups, jobs, strict=True)]
    lost = _wait(entries, [_array_id(jobs) for _, jobs in arrays])
    totals = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    failed_tasks = 0
    for group, job in entries:
        if str(job.job_id) in lost:
            failed_tasks += 1
            log(f"SLURM task {job.job_id} ({_label(group)}) ended without a result (cancelled, out of time or "
                f"memory, or its node failed): {_last_line(job.paths.stderr)} (log: {job.paths.stderr})")
            continue
        error = job.exception()
        if error is not None:
            failed_tasks += 1
            log(f"SLURM task {job.job_id} ({_label(group)}) failed: {_failure_line(error)} "
                f"(log: {job.paths.stderr})")
            continue
        counts = job.result() or {}
        for key in totals:
            totals[key] += int(counts.get(key, 0))
        if counts.get("failed"):
            log(f"SLURM task {job.job_id} ({_label(group)}): {counts['failed']} run(s) failed "
                f"(failed.json in their folders; log: {job.paths.stderr})")
    totals["failed_tasks"] = failed_tasks
    log(f"SLURM: {len(entries) - failed_tasks} of {len(entries)} task(s) ended normally; runs done {totals['done']}, "
        f"failed {totals['failed']}, skipped {totals['skipped']}"
        + ("; rerunning the same command submits the unfinished runs again" if failed_tasks or totals["failed"]
           else ""))
    return totals
