"""--out is replaced only when it is ours; the swap is atomic for readers and safe between writers; SIGTERM,
stale staging, a full disk (issue 19, parts 2 and 4)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnext_deploy.buildfolder.artifacts import atomic_dir, atomic_file, foreign, host_tag, remove_stale, staging_prefix
from resnext_deploy.cli import cli
from resnext_deploy.errors import (EXIT_BAD_INPUT, EXIT_RESOURCE, EXIT_TERMINATED, BadInputError, ResourceError)
from resnext_deploy.buildfolder.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"


def fake_build(path: Path, payload: bytes = b"x" * 1000, tag: str = "old") -> Path:
    """A folder that looks like a previous build: a manifest.json of our schema and one artifact file."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_SCHEMA_VERSION, "tag": tag}))
    (path / "model.bin").write_bytes(payload)
    return path


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def beside(out: Path) -> list:
    """Everything in --out's parent other than --out itself."""
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "a.csv").write_text("1,2,3")
    return path


# -- what --out may be --------------------------------------------------------------------------------

def test_missing_empty_and_previous_builds_are_replaced(tmp_path):
    for out in (tmp_path / "missing", tmp_path / "empty", fake_build(tmp_path / "previous")):
        if out.name == "empty":
            out.mkdir()
        assert foreign(out) is None
        with atomic_dir(out) as d:
            (d / "new.txt").write_text("new")
        assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert beside(tmp_path / "missing") == ["empty", "previous"]  # no staging, no lock, no old copy left


def test_a_folder_of_user_files_is_refused_and_kept(tmp_path):
    out = user_folder(tmp_path / "mydata")
    before = snapshot(out)
    with pytest.raises(BadInputError) as e:
        with atomic_dir(out) as d:
            (d / "x").write_text("never")
    msg = str(e.value)
    assert str(out) in msg and "2 entries" in msg and "thesis.tex" in msg and "--force" in msg
    assert snapshot(out) == before and beside(out) == []


def test_a_file_and_a_symlink_are_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("precious")
    with pytest.raises(BadInputError, match=r"is a file of 8 bytes"):
        with atomic_dir(afile):
            pass
    assert afile.read_text() == "precious"
    target = user_folder(tmp_path / "elsewhere")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(BadInputError, match=r"symbolic link \(to '.*elsewhere'\)"):
        with atomic_dir(link):
            pass
    assert link.is_symlink() and (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "elsewhere", "link"]


def test_force_replaces_a_folder_a_file_and_a_symlink_itself(tmp_path):
    out = user_folder(tmp_path / "mydata")
    with atomic_dir(out, force=True) as d:
        (d / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with atomic_dir(afile, force=True) as d:
        (d / "new.txt").write_text("new")
    assert afile.is_dir()
    target = user_folder(tmp_path / "elsewhere")
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_dir(link, force=True) as d:
        (d / "new.txt").write_text("new")
    assert link.is_dir() and not link.is_symlink()
    assert (target / "thesis.tex").read_text() == "years of work"  # the link is replaced, not what it pointed at
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "elsewhere", "link", "mydata"]


def test_build_cli_refuses_user_folder_and_file_before_any_work(tmp_path):
    out = user_folder(tmp_path / "mydata")
    before = snapshot(out)
    res = CliRunner().invoke(cli, ["-q", "build", "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "thesis.tex" in res.output and "--force" in res.output and "Traceback" not in res.output
    assert snapshot(out) == before and beside(out) == []
    afile = tmp_path / "afile"
    afile.write_text("precious")
    res = CliRunner().invoke(cli, ["-q", "build", "--out", str(afile)])
    assert res.exit_code == EXIT_BAD_INPUT and "is a file of 8 bytes" in res.output
    assert afile.read_text() == "precious"


def test_sensitivity_and_bench_refuse_user_folders(tmp_path):
    out = user_folder(tmp_path / "mydata")
    before = snapshot(out)
    (tmp_path / "m.onnx").write_bytes(b"refused before it is read")
    res = CliRunner().invoke(cli, ["-q", "sensitivity", "--onnx", str(tmp_path / "m.onnx"), "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT and "thesis.tex" in res.output, res.output
    res = CliRunner().invoke(cli, ["-q", "bench", "--arch", "resnext_demo", "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT and "thesis.tex" in res.output, res.output
    assert snapshot(out) == before


# -- stale staging and SIGTERM ------------------------------------------------------------------------

def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_staging_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    out = fake_build(tmp_path / "b")
    dead = tmp_path / f"{staging_prefix(out)}{dead_pid()}-{host_tag()}-abcdefgh"
    (dead / "onnx").mkdir(parents=True)
    (dead / "onnx" / "model.onnx").write_bytes(b"half" * 1000)
    dead_fallback = tmp_path / f".{dead.name}.fallback-xyz"  # made beside a staging folder by the fallback
    dead_fallback.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"{staging_prefix(out)}{sleeper.pid}-{host_tag()}-abcdefgh"
        live.mkdir()
        elsewhere = tmp_path / f"{staging_prefix(out)}{dead_pid()}-0badc0de-abcdefgh"  # another machine's (NFS)
        elsewhere.mkdir()
        other = tmp_path / ".c.tmp-1-abcdefgh"  # another output's: not ours to judge
        other.mkdir()
        with atomic_dir(out) as d:
            (d / "new.txt").write_text("new")
        assert not dead.exists() and not dead_fallback.exists()
        assert live.is_dir() and other.is_dir() and elsewhere.is_dir()
        assert remove_stale(out) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale(out) == [live]


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigterm_mid_build_removes_staging_and_exits_143(tmp_path):
    """A real build of the demo in a child process, sent SIGTERM once its staging folder holds the ONNX."""
    out = fake_build(tmp_path / "b")
    before = snapshot(out)
    stale = tmp_path / f"{staging_prefix(out)}{dead_pid()}-{host_tag()}-zzzzzzzz"  # a SIGKILLed build's litter
    stale.mkdir()
    (stale / "junk").write_bytes(b"j" * 4096)
    proc = subprocess.Popen([sys.executable, "-m", "resnext_deploy", "-q", "build", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def staged() -> bool:
            return any(p.name.startswith(staging_prefix(out)) and (p / "onnx").is_dir() for p in tmp_path.iterdir())

        _wait_for(lambda: staged() or proc.poll() is not None, 300, "the build to stage its ONNX")
        assert proc.poll() is None, proc.communicate()
        assert not stale.exists()  # the build removed the dead process's staging when it started
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_TERMINATED, err
    assert "terminated" in err and "Traceback" not in err
    assert beside(out) == [] and snapshot(out) == before


# -- readers and writers during the swap --------------------------------------------------------------

READER = textwrap.dedent("""
    import os, sys, time
    path, stop = sys.argv[1], sys.argv[2]
    polls = missing = 0
    while not os.path.exists(stop):
        polls += 1
        try:
            with open(path, "rb") as f:
                f.read()
        except FileNotFoundError:
            missing += 1
    print(polls, missing)
""")

WRITER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from resnext_deploy.buildfolder.artifacts import atomic_dir
    from resnext_deploy.buildfolder.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION
    out, n, tag = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for i in range(n):
        with atomic_dir(out) as d:
            (d / "manifest.json").write_text(json.dumps({"schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_SCHEMA_VERSION, "i": i, "tag": tag}))
            (d / "payload.bin").write_bytes(b"p" * 20000)
    print("done", n)
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOOLKIT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_300_swaps_never_show_a_reader_a_missing_manifest(tmp_path):
    out = fake_build(tmp_path / "b")
    stop = tmp_path / "stop"
    reader = _python(READER, str(out / "manifest.json"), str(stop))
    try:
        writer = _python(WRITER, str(out), "300", "w")
        w_out, w_err = writer.communicate(timeout=300)
    finally:
        stop.write_text("")
    r_out, r_err = reader.communicate(timeout=60)
    assert writer.returncode == 0 and w_out.strip() == "done 300", w_err
    polls, missing = map(int, r_out.split())
    assert polls > 300 and missing == 0, (polls, missing, r_err)
    assert json.loads((out / "manifest.json").read_text())["i"] == 299
    assert beside(out) == ["stop"]


def test_two_writers_swapping_one_out_never_fail(tmp_path):
    out = tmp_path / "b"
    writers = [_python(WRITER, str(out), "150", tag) for tag in ("one", "two")]
    results = [w.communicate(timeout=300) for w in writers]
    for w, (o, e) in zip(writers, results):
        assert w.returncode == 0 and o.strip() == "done 150", e
    assert json.loads((out / "manifest.json").read_text())["tag"] in ("one", "two")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "payload.bin"]
    assert beside(out) == []


# -- a full disk ---------------------------------------------------------------------------------------

def test_enospc_inside_a_build_folder_is_a_resource_error_naming_the_path(tmp_path):
    out = fake_build(tmp_path / "b", payload=b"y" * 3_000_000)
    before = snapshot(out)
    with pytest.raises(ResourceError) as e:
        with atomic_dir(out) as d:
            (d / "onnx").mkdir()
            (d / "onnx" / "model-fp32.onnx").write_bytes(b"z" * 1_500_000)
            with atomic_file(d / "onnx" / "model-int8.onnx") as tmp:
                tmp.write_bytes(b"q" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    msg = str(e.value)
    assert e.value.exit_code == EXIT_RESOURCE
    assert "model-int8.onnx" in msg and "no space left" in msg
    assert "1.4 MiB written" in msg and "complete output takes about 2.9 MiB" in msg and "untouched" in msg
    assert snapshot(out) == before and beside(out) == []


def test_simulated_enospc_in_a_cli_build_exits_6(tmp_path, monkeypatch):
    """onnx.save fails as on a full disk (the export's simplified model): exit 6, the path, no traceback."""
    import onnx

    out = fake_build(tmp_path / "b")
    before = snapshot(out)

    def full(proto, path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx, "save", full)
    res = CliRunner().invoke(cli, ["-q", "build", "--out", str(out)])
    assert res.exit_code == EXIT_RESOURCE, res.output
    assert "Cannot write" in res.output and "model-fp32.onnx" in res.output and "no space left" in res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert snapshot(out) == before and beside(out) == []


def test_readonly_file_system_is_a_resource_error(tmp_path):
    with pytest.raises(ResourceError, match="read-only"):
        with atomic_dir(tmp_path / "b") as d:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(d / "x"))
    assert beside(tmp_path / "b") == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 3 MiB tmpfs (needs root and mount); skipped with the reason otherwise."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# How much the previous build leaves free decides where the build fails, each a different way of saying it:
# 2600 KiB: the export's onnx.save (OSError); 2300: ORT's quantize_static reads a model a C++ writer truncated
# (DecodeError, the finding); 1200: OpenVINO's save_model ("basic_ios::clear: iostream error")
@pytest.mark.parametrize("previous_kib", [2600, 2300, 1200])
def test_build_on_a_full_tmpfs_exits_6_and_keeps_the_previous_build(tiny_tmpfs, previous_kib):
    out = fake_build(tiny_tmpfs / "b", payload=os.urandom(previous_kib * 1024))
    before = snapshot(out)
    proc = subprocess.run([sys.executable, "-m", "resnext_deploy", "-q", "build", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_RESOURCE, proc.stderr
    assert f"Cannot write '{tiny_tmpfs}" in proc.stderr and "no space left on the device" in proc.stderr
    assert "internal error" not in proc.stderr and "DecodeError" not in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before and beside(out) == []


def test_enospc_outside_a_writer_is_exit_6_not_internal(monkeypatch):
    """Any command: an OSError ENOSPC that reaches the CLI is the resource exit code with the path."""
    import resnext_deploy.pipeline.commands as commands

    def full(*a, **k):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/u/.cache/x.bin")

    monkeypatch.setattr(commands, "check_file", full)
    before = signal.getsignal(signal.SIGTERM)
    res = CliRunner().invoke(cli, ["check"])
    assert res.exit_code == EXIT_RESOURCE, res.output
    assert "Cannot write '/home/u/.cache/x.bin': the disk quota is exceeded" in res.output and "internal" not in res.output
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's SIGTERM handler is gone after the command
