"""``--launcher local|slurm`` of the protocol commands: where the plan's runs execute.

``local`` (default): in this process or its ``--jobs`` workers (the protocol command itself). ``slurm``: the
unfinished runs as a SLURM job array (:mod:`dipclip.protocols.launchers.slurm`); the command returns at once
with the job id, or follows the tasks to their end with ``--wait`` and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DipclipError
from .common import positive_int

SLURM_FLAGS = {"slurm_partition": "--slurm-partition", "slurm_time": "--slurm-time",
               "slurm_gpus_per_task": "--slurm-gpus-per-task", "slurm_cpus_per_task": "--slurm-cpus-per-task",
               "slurm_array_parallelism": "--slurm-array-parallelism", "slurm_option": "--slurm-option",
               "wait": "--wait"}


def slurm_option(text: str) -> tuple[str, str | bool]:
    """``KEY=VALUE`` (``mem=32G``, ``qos=high``, ``constraint=a100``), or ``KEY`` alone for a bare sbatch flag."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key or (sep and not value.strip()):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, an sbatch option without its dashes (e.g. mem=32G, "
                                         f"qos=high), got {text!r}")
    return key, value.strip() if sep else True


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the runs execute")
    group.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local (default): this process, or its --jobs workers; slurm: the unfinished runs as a "
                            "SLURM job array, one task per dataset and seed (needs pip install dipclip[slurm])")
    group.add_argument("--slurm-partition", default=None, metavar="NAME", help="default: the cluster's default")
    group.add_argument("--slurm-time", type=positive_int, default=None, metavar="MINUTES",
                       help="time limit of each array task (default: the partition's)")
    group.add_argument("--slurm-gpus-per-task", type=positive_int, default=None, metavar="N",
                       help="GPUs per array task (default: none requested)")
    group.add_argument("--slurm-cpus-per-task", type=positive_int, default=None, metavar="N",
                       help="CPU cores per array task (default: SLURM's)")
    group.add_argument("--slurm-array-parallelism", type=positive_int, default=None, metavar="N",
                       help="array tasks running at once (default: as many as SLURM allows)")
    group.add_argument("--slurm-option", action="append", type=slurm_option, default=None, metavar="KEY=VALUE",
                       help="any other sbatch option, repeatable: --slurm-option mem=32G --slurm-option qos=high")
    group.add_argument("--wait", action="store_true",
                       help="with --launcher slurm: follow the tasks to their end, name each failure, print the table")


def slurm_options(args):
    from ..protocols.launchers.slurm import SlurmOptions

    env = {}
    if os.environ.get("DIPCLIP_CACHE_DIR"):  # the tasks use this command's feature store, whatever sbatch exports
        env["DIPCLIP_CACHE_DIR"] = os.path.abspath(os.path.expanduser(os.environ["DIPCLIP_CACHE_DIR"]))
    return SlurmOptions(partition=args.slurm_partition, time=args.slurm_time, gpus_per_task=args.slurm_gpus_per_task,
                        cpus_per_task=args.slurm_cpus_per_task, array_parallelism=args.slurm_array_parallelism,
                        extra=dict(args.slurm_option or ()), env=env)


def launch(args, config) -> int | None:
    """``None`` for ``--launcher local`` (the caller runs the plan); else submit to SLURM and return the exit
    status: 0 once submitted (or, with ``--wait``, when every run finished), the failed runs' count otherwise."""
    if getattr(args, "plan", False):  # --plan prints the runs and exits, wherever they would run
        return None
    if args.launcher == "local":
        given = [flag for name, flag in SLURM_FLAGS.items() if getattr(args, name, None) not in (None, False)]
        if given:
            raise DipclipError(f"{given[0]} applies to --launcher slurm; add --launcher slurm, or remove {given[0]}")
        return None
    if getattr(args, "jobs", 1) not in (None, 1) or getattr(args, "devices", None):
        raise DipclipError("--jobs and --devices start workers on this machine; with --launcher slurm each array "
                           "task is a worker: use --slurm-array-parallelism and --slurm-gpus-per-task instead")
    from ..protocols.launchers.slurm import submit
    from ..protocols.plan import expand
    from ..protocols.runner import ProtocolRunner

    options = slurm_options(args)
    runner = ProtocolRunner(config)
    runner.write_plan()  # for `dipclip status`
    job = submit(config, expand(config), options, wait=args.wait,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    if job:
        print(f"SLURM job {job}")
    if job and not args.wait:
        print(f"follow it with: dipclip status {runner.root}")
        return 0
    summary = runner.summarise()
    print((runner.root / "summary.md").read_text())
    incomplete = summary.get("incomplete", {})
    failed = len(incomplete.get("failed", []))
    unfinished = failed + len(incomplete.get("missing", [])) + len(incomplete.get("running", []))
    if unfinished:
        print(f"dipclip: error: {unfinished} run(s) did not finish ({failed} failed, each with its error in its "
              f"folder's failed.json); `dipclip status {runner.root}` lists them, and rerunning the command "
              "submits them again", file=sys.stderr)
        return min(unfinished, 125)
    return 0
