"""The CLI's progress display: bars on a terminal, a line per stage and per 10 % in a log, rates per pass."""

from __future__ import annotations

import io

from resnext_deploy.progress import ProgressDisplay


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_log_gets_a_line_per_stage_and_per_tenth():
    out, clock = io.StringIO(), Clock()
    show = ProgressDisplay(stream=out, terminal=False, clock=clock)
    for done in range(0, 101):
        clock.t = done * 0.5
        show("evaluate openvino-int8", done, 100)
    lines = out.getvalue().splitlines()
    assert lines[0].strip() == "evaluate openvino-int8: started (100 to do)"
    assert len(lines) == 1 + 10  # 10 %, 20 %, ... 100 %, once each
    assert lines[-1].strip().startswith("evaluate openvino-int8: 100/100 (100%), 2.0 img/s")
    assert "\r" not in out.getvalue()  # a log, not a redrawn bar


def test_a_stage_that_runs_again_shows_its_own_rate():
    """The fallback re-evaluates: the second pass (600 img/s) must not show the first pass's slow start."""
    out, clock = io.StringIO(), Clock()
    show = ProgressDisplay(stream=out, terminal=False, clock=clock)
    for done in range(0, 11):
        clock.t = done * 10.0  # 0.1 img/s
        show("evaluate openvino-int8", done, 10)
    clock.t = 1000.0
    for done in range(0, 601, 60):
        show("evaluate openvino-int8", done, 600)
        clock.t += 0.1  # 600 img/s
    last = out.getvalue().splitlines()[-1]
    assert "600/600" in last and "600.0 img/s" in last
    assert out.getvalue().count("started") == 2


def test_quiet_draws_nothing():
    out = io.StringIO()
    show = ProgressDisplay(enabled=False, stream=out, terminal=False)
    show("export", 1, 1)
    assert out.getvalue() == ""


def test_a_terminal_gets_rich_bars():
    out = io.StringIO()
    show = ProgressDisplay(stream=out, terminal=True)
    for done in range(0, 5):
        show("timed rounds", done, 4)
    text = out.getvalue()
    assert "timed rounds" in text and "4/4" in text


def test_a_command_in_a_log_prints_progress_lines(demo_build, tmp_path):
    """`quantize` with stderr not a terminal (CliRunner, like a CI log): a line per stage start and per 10 %."""
    from click.testing import CliRunner

    from resnext_deploy.cli import cli

    res = CliRunner().invoke(cli, ["quantize", "--onnx", str(demo_build.out_dir / "onnx" / "model-fp32.onnx"),
                                   "--out", str(tmp_path / "q.onnx")])
    assert res.exit_code == 0, res.output
    lines = [ln.strip() for ln in res.output.splitlines()]
    assert any(ln.startswith("load calibration images: started (") for ln in lines)
    assert any(ln.startswith("load calibration images: ") and "(100%)" in ln for ln in lines)
    assert any(ln.startswith("calibrate: started (") for ln in lines)
    assert "\r" not in res.output
