"""``dipclip status OUT/PROTOCOL``: where a sweep stands, from its folders alone.

Each run of the plan (``plan.jsonl``, written by the protocol command) is done (a ``metrics.json``), running
(its claim held by a live worker: host, pid or SLURM job, since when), stale (a claim file left by a worker
that died: the next worker takes the run over and resumes it), failed (``failed.json``: why) or pending. The
ETA divides the pending and running runs' expected time (the mean duration of the finished runs of the same
method) by the number of live workers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..engine.locking import claim_holder
from ..errors import DipclipError
from .run import FAILED_NAME, read_failure

PLAN_NAME = "plan.jsonl"
STATES = ("done", "running", "stale", "failed", "pending")


def read_plan(root: Path) -> list[dict]:
    path = root / PLAN_NAME
    if not path.is_file():
        raise DipclipError(f"{root} holds no {PLAN_NAME}: give the folder a protocol command wrote into "
                           "(OUT/base2new, OUT/fewshot, OUT/xd or OUT/dg)")
    try:
        runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not all(isinstance(r, dict) and isinstance(r.get("folder"), str) for r in runs):
            raise ValueError("a line without a folder")
    except (OSError, ValueError) as exc:
        raise DipclipError(f"{path} is damaged ({exc}); rerun the protocol command to write it again") from None
    return runs


def _duration(metrics_path: Path) -> float | None:
    try:
        timing = json.loads(metrics_path.read_text()).get("timing") or {}
        return float(timing["total_seconds"]) if "total_seconds" in timing else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def sweep_status(root: str | Path) -> dict:
    """Every planned run's state, counts per state, and the ETA in seconds (``None`` when unknown)."""
    root = Path(root)
    runs = []
    durations: dict[str, list[float]] = {}
    for planned in read_plan(root):
        folder = root / planned["folder"]
        entry = {"folder": planned["folder"], "method": planned.get("method"), "kind": planned.get("kind")}
        holder = claim_holder(folder)
        if (folder / "metrics.json").is_file():
            entry["state"] = "done"
            seconds = _duration(folder / "metrics.json")
            if seconds is not None:
                durations.setdefault(str(entry["method"]), []).append(seconds)
        elif holder is not None:
            entry["state"], who = holder
            entry |= who
        elif read_failure(folder) is not None:
            entry["state"], entry["error"] = "failed", read_failure(folder).get("error")
        else:
            entry["state"] = "pending"
        runs.append(entry)
    counts = {state: sum(r["state"] == state for r in runs) for state in STATES}
    every = [s for values in durations.values() for s in values]
    eta = None
    if every and counts["pending"] + counts["running"] + counts["stale"]:
        expected = sum(sum(durations.get(str(r["method"]), every)) / len(durations.get(str(r["method"]), every))
                       for r in runs if r["state"] in ("pending", "running", "stale"))
        eta = expected / max(1, counts["running"])
    return {"root": str(root), "runs": runs, "counts": counts, "eta_seconds": eta}


def format_status(status: dict) -> str:
    counts = status["counts"]
    lines = [f"{status['root']}: " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f" of {len(status['runs'])}"]
    for run in status["runs"]:
        if run["state"] in ("running", "stale"):
            since = run.get("since")
            ago = f", since {time.time() - float(since):.0f} s" if since and since.replace(".", "").isdigit() else ""
            job = f", job {run['job']}" if run.get("job") not in (None, "-") else ""
            note = " (worker died: the next worker takes it over)" if run["state"] == "stale" else ""
            lines.append(f"  {run['state']:8} {run['folder']}  host {run.get('host')} pid {run.get('pid')}{job}"
                         f"{ago}{note}")
        elif run["state"] == "failed":
            lines.append(f"  failed   {run['folder']}: {run.get('error')} ({FAILED_NAME})")
    if status["eta_seconds"] is not None:
        lines.append(f"ETA: about {status['eta_seconds'] / 60:.1f} min (mean duration of the finished runs)")
    return "\n".join(lines)
