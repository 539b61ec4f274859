"""How busy the machine was while latency was timed, and whether that makes the numbers incomparable.

Latency measured while other processes compete for the cores is not the model's latency: one run of this
project's PyTorch row took p50 464 ms under load against 6.75 ms on a quiet machine. The build and the bench
take a snapshot of /proc/loadavg (and of this process's own running threads) before and after timing, and
:func:`timing_verdict` says when the latency was measured under load. Stdlib only (it runs on the device too).

The rules, each with its reason:

- **1-minute load average above the core count** (before or after timing): on average more tasks wanted a
  core than there were cores, so some of the timed runs waited for one.
- **other runnable tasks >= cores, before and after timing**: /proc/loadavg's runnable count minus this
  process's own running threads; when other work fills every core at both ends of the measurement it most
  likely did in between (one snapshot alone is too noisy to judge on).
- **p99 / p50 above 3** for an artifact: a quiet CPU's batch-1 latency tail stays within 1.5x of its median
  (OpenVINO's benchmark_app and our quiet runs of the demo and ResNeXt-50); a run preempted by another task
  loses a scheduler time slice (several ms under CFS), which for a model of a few milliseconds triples the
  slowest runs. 3 leaves room for the demo's sub-millisecond runs, where timer and cache noise weigh more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

#: p99 / p50 above this: the tail says the runs were interrupted (see the module doc)
MAX_TAIL_RATIO = 3.0


def cores() -> int:
    """CPUs this process may run on (the affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_running_threads() -> Optional[int]:
    n = 0
    try:
        for stat in Path("/proc/self/task").glob("*/stat"):
            text = stat.read_text()
            if text[text.rindex(")") + 2:].startswith("R"):
                n += 1
    except (OSError, ValueError):
        return None
    return n


def read_loadavg() -> Optional[List[str]]:
    """The fields of /proc/loadavg (1/5/15-minute averages, running/total tasks, last pid); None off Linux."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
    except OSError:
        return None
    return fields if len(fields) >= 4 else None


def load_average() -> Optional[List[float]]:
    """The 1/5/15-minute load averages, rounded to 2 digits; None where /proc/loadavg does not exist."""
    fields = read_loadavg()
    try:
        return [round(float(x), 2) for x in fields[:3]] if fields else None
    except ValueError:
        return None


def snapshot() -> Dict[str, Any]:
    """{"load_1m", "load_5m", "load_15m", "runnable", "tasks", "own_running", "others_runnable", "cores"};
    only "cores" where /proc/loadavg does not exist (not Linux)."""
    out: Dict[str, Any] = {"cores": cores()}
    fields = read_loadavg()
    if fields is None:
        return out
    try:
        running, total = fields[3].split("/")
        out.update(load_1m=float(fields[0]), load_5m=float(fields[1]), load_15m=float(fields[2]),
                   runnable=int(running), tasks=int(total))
    except (OSError, ValueError, IndexError):
        return out
    own = _own_running_threads()
    if own is not None:
        out["own_running"] = own
        out["others_runnable"] = max(0, out["runnable"] - own)
    return out


def load_reasons(before: Dict[str, Any], after: Dict[str, Any]) -> List[str]:
    """Why the machine was busy between two snapshots (empty: it was not, as far as they tell)."""
    reasons = []
    n = before.get("cores") or after.get("cores") or cores()
    high = [s["load_1m"] for s in (before, after) if s.get("load_1m") is not None and s["load_1m"] > n]
    if high:
        reasons.append(f"1-minute load average {max(high):.2f} above the {n} cores")
    others = [s.get("others_runnable") for s in (before, after)]
    if all(o is not None and o >= n for o in others):
        reasons.append(f"{min(others)} other runnable tasks on {n} cores before and after timing")
    return reasons


def timing_verdict(results: Iterable[Dict[str, Any]], before: Optional[Dict[str, Any]] = None,
                   after: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Whether the latency of these result rows was measured under load: {"under_load", "reasons", "rules"}.

    Reads each row's ``load`` ({"before", "after"} snapshots, evaluate.measure_latency) and its latency tail.
    Rows without a ``load`` record (older reports, device rows) are judged by their tail only. ``before`` /
    ``after``: snapshots around the whole timing (the bench's), judged once.
    """
    reasons: List[str] = [f"machine: {why}" for why in load_reasons(before or {}, after or {})] if before or after else []
    for r in results:
        if r.get("pending"):
            continue
        load = r.get("load") or {}
        for why in load_reasons(load.get("before") or {}, load.get("after") or {}):
            reasons.append(f"{r['artifact']}: {why}")
        lat = r.get("latency_ms") or {}
        if lat.get("p50") and lat.get("p99") and lat["p99"] / lat["p50"] > MAX_TAIL_RATIO:
            reasons.append(f"{r['artifact']}: p99/p50 = {lat['p99'] / lat['p50']:.1f} above {MAX_TAIL_RATIO:g}")
    return {
        "under_load": bool(reasons),
        "reasons": reasons,
        "rules": f"1-minute load average > cores, other runnable tasks >= cores before and after timing, "
                 f"or p99/p50 > {MAX_TAIL_RATIO:g} (host/load.py)",
    }


UNDER_LOAD_WARNING = "Latency was measured under load and should not be compared with other runs"
