"""Nothing leaves the machine: a whole demo build attempts no network connection and writes nothing under ~
(issue 19, part 5: OpenVINO's telemetry wrote ~/intel/openvino_ga_cid and ~/intel/stats and called Google)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from resnext_deploy.optional import NO_TELEMETRY_ENV

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"

# The build runs in a fresh interpreter (in-process there: pipeline.build.build), so no library imported by an
# earlier test (and not pytest itself, which NNCF takes as a reason to keep quiet) changes what it does.
BUILD = textwrap.dedent("""
    import json, socket, sys
    log = sys.argv[3]

    def refuse(name):
        def blocked(*args, **kwargs):
            with open(log, "a") as f:  # at once: OpenVINO's telemetry sends from a thread, and at exit
                f.write(json.dumps([name, repr(args)[:300]]) + "\\n")
            raise OSError("outbound network blocked by the test")
        return blocked

    socket.socket.connect = refuse("socket.connect")
    socket.socket.connect_ex = refuse("socket.connect_ex")
    socket.create_connection = refuse("socket.create_connection")
    socket.getaddrinfo = refuse("socket.getaddrinfo")

    from resnext_deploy.pipeline.build import build

    res = build(out=sys.argv[1], force=True)
    with open(sys.argv[2], "w") as f:
        json.dump({"passed": res.passed, "artifacts": [a.name for a in res.artifacts]}, f)
""")


def files_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_demo_build_attempts_no_connection_and_writes_nothing_in_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "mydata"  # a folder of the user's, replaced with force=True: the build runs to the end
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = tmp_path / "result.json"
    # What the libraries take as "in CI, keep quiet" is removed too: the test must hold on a user's machine.
    quiet = ("CI", "TF_BUILD", "JENKINS_URL", "GITHUB_ACTIONS", "ORT_RUNNING_UNIT_TESTS")
    env = {k: v for k, v in os.environ.items() if k not in NO_TELEMETRY_ENV and k not in quiet}
    env.pop("MPLCONFIGDIR", None)  # the toolkit itself keeps matplotlib's config and cache out of ~ (optional.py)
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(TOOLKIT), os.environ.get("PYTHONPATH", "")]))
    attempts = tmp_path / "attempts.jsonl"
    attempts.write_text("")
    proc = subprocess.run([sys.executable, "-c", BUILD, str(out), str(result), str(attempts)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(result.read_text())
    assert "openvino-int8" in got["artifacts"] and "onnxruntime-int8" in got["artifacts"]  # OpenVINO really ran
    # the process has exited: what telemetry sends at exit is in the log too (before: www.google-analytics.com:443)
    assert attempts.read_text() == ""
    # no ~/intel/openvino_ga_cid, ~/intel/stats (OpenVINO), no ~/.cache/Microsoft/DeveloperTools/.onnxruntime (ORT)
    assert files_under(home) == []
    assert (out / "manifest.json").is_file() and not (out / "notes.txt").exists()  # force replaced the user's folder


def test_matplotlib_config_and_cache_stay_out_of_home(tmp_path):
    """A chart drawn with HOME set and no MPLCONFIGDIR: nothing under ~ (before: ~/.cache/matplotlib, ~/.config)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(TOOLKIT))
    code = ("from resnext_deploy.optional import require\nrequire('matplotlib')\nimport matplotlib, os\n"
            "from matplotlib.figure import Figure\nfrom matplotlib.backends.backend_agg import FigureCanvasAgg\n"
            "f = Figure(); FigureCanvasAgg(f); f.add_subplot().plot([1, 2]); f.canvas.draw()\n"
            "print(matplotlib.get_cachedir())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stdout.strip().startswith(str(home))
    assert files_under(home) == []
