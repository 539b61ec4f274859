"""Latency measured under load is flagged: the rules, and a build with busy loops on every core."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.host.load import MAX_TAIL_RATIO, cores, load_reasons, snapshot, timing_verdict


def _row(p50=1.0, p99=1.2, before=None, after=None):
    return {"artifact": "a", "latency_ms": {"p50": p50, "p99": p99}, "load": {"before": before or {}, "after": after or {}}}


def test_snapshot_reads_proc_loadavg():
    s = snapshot()
    assert s["cores"] == cores() >= 1
    if "load_1m" in s:  # Linux
        assert s["runnable"] >= 1 and s["tasks"] >= s["runnable"]
        assert 0 <= s["others_runnable"] <= s["runnable"] and s["own_running"] >= 1  # this thread runs


def test_rules():
    quiet = {"load_1m": 0.5, "others_runnable": 0, "cores": 2}
    assert not timing_verdict([_row(before=quiet, after=quiet)])["under_load"]
    assert load_reasons({"load_1m": 2.5, "cores": 2}, quiet) == ["1-minute load average 2.50 above the 2 cores"]
    assert load_reasons({"load_1m": 2.0, "cores": 2}, quiet) == []  # equal to the core count: not above it
    busy = dict(quiet, others_runnable=2)
    assert load_reasons(busy, quiet) == []  # one busy snapshot alone does not decide
    assert load_reasons(busy, busy) == ["2 other runnable tasks on 2 cores before and after timing"]
    v = timing_verdict([_row(p99=MAX_TAIL_RATIO * 1.01, before=quiet, after=quiet)])
    assert v["under_load"] and "p99/p50" in v["reasons"][0]
    assert not timing_verdict([{"artifact": "t", "pending": True}])["under_load"]


def _spin(stop):
    while not stop.is_set():
        pass


FAST = """
target = "x86-cpu"
[backends.onnxruntime]
precisions = ["int8"]
[calibration]
count = 32
[evaluation]
limit = 100
warmup = 1
iterations = 10
"""


@pytest.mark.slow
def test_a_build_under_artificial_load_is_flagged(tmp_path):
    """One busy loop per core during the whole build: the report (json, md, html) and the console say so."""
    pytest.importorskip("torch")
    recipe = tmp_path / "fast.toml"
    recipe.write_text(FAST)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores())]
    for p in spinners:
        p.start()
    try:
        time.sleep(2)
        res = CliRunner().invoke(cli, ["build", "--recipe", str(recipe), "--out", str(tmp_path / "b")])
    finally:
        stop.set()
        for p in spinners:
            p.join(10)
    assert res.exit_code in (0, 3), res.output
    import json

    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["timing"]["under_load"], report["timing"]
    assert all(r["load"]["before"]["cores"] == cores() for r in report["results"])
    assert "measured under load" in res.output
    assert "measured under load" in (tmp_path / "b" / "report.md").read_text()
    assert 'id="under-load"' in (tmp_path / "b" / "report.html").read_text()
