"""Issue 28, part 1 and 3: what a build can know at its start is refused at its start, with the documented exit code.

Each test is one failure line of the issue; before the change each of them failed (exit 4 after the whole build,
exit 2 where the README says 6, exit 0 deleting the user's files, a MemoryError, an endless run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnext_deploy.errors import BadInputError, ResourceError
from resnext_deploy.buildfolder.manifest import folder_digest
from resnext_deploy.pipeline.preflight import check_output
from resnext_deploy.recipes import load_recipe

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
CAN_MOUNT = shutil.which("unshare") is not None and os.geteuid() == 0 and subprocess.run(
    ["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("out", [".", "", "..", "./"])
def test_out_without_a_name_is_refused_before_the_build(out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError) as e:  # before: ValueError "PosixPath('.') has an empty name", exit 4
        check_output(out)
    assert "--out" in str(e.value) and e.value.exit_code == 2


def test_force_never_replaces_the_folder_holding_the_builds_inputs(tmp_path):
    mine = tmp_path / "project"
    (mine / "images").mkdir(parents=True)
    (mine / "model.onnx").write_bytes(b"x")
    (mine / "notes.txt").write_text("mine")
    for inputs in ([mine / "model.onnx"], [mine / "images"], [mine]):
        with pytest.raises(BadInputError, match="--force does not change this"):
            check_output(mine, force=True, inputs=inputs)
    assert (mine / "notes.txt").read_text() == "mine"
    check_output(tmp_path / "new", force=True, inputs=[mine / "model.onnx"])  # elsewhere: fine


def test_force_never_replaces_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(BadInputError, match="current folder"):
        check_output(tmp_path, force=True)


def test_mount_point_is_refused_naming_it(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == target)  # a real one: below
    with pytest.raises(BadInputError, match="mount point") as e:
        check_output(target)
    assert f"{target}/build" in str(e.value)


# In a private mount namespace (as root): a real bind mount at --out, and a read-only file system above --out.
MOUNTED = textwrap.dedent("""
    set -e
    mount --bind "$1/host" "$1/out"
    mount -t tmpfs -o ro tmpfs "$1/ro"
    cd "$1"
    python -m resnext_deploy build --out "$1/out" > "$1/mount.txt" 2>&1 || echo "exit $?" >> "$1/mount.txt"
    python -m resnext_deploy build --out "$1/ro/build" > "$1/ro.txt" 2>&1 || echo "exit $?" >> "$1/ro.txt"
""")


@pytest.mark.skipif(not CAN_MOUNT, reason="needs root and unshare -m for a real bind mount")
def test_real_bind_mount_and_read_only_file_system_before_any_stage(tmp_path):
    for d in ("host", "out", "ro"):
        (tmp_path / d).mkdir()
    env = {**os.environ, "PYTHONPATH": str(TOOLKIT)}
    subprocess.run(["unshare", "-m", "sh", "-c", MOUNTED, "sh", str(tmp_path)], env=env, check=True, timeout=300)
    mount = (tmp_path / "mount.txt").read_text()
    ro = (tmp_path / "ro.txt").read_text()
    # before: exit 4 "OSError: [Errno 16] Device or resource busy" at the final swap, after the whole build
    assert "mount point" in mount and mount.strip().endswith("exit 2"), mount
    # before: exit 2 "not writable"; the README's table says a read-only file system is 6
    assert "read-only" in ro and ro.strip().endswith("exit 6"), ro
    assert not any((tmp_path / "host").iterdir())  # nothing was built


def test_read_only_file_system_is_a_resource_error(monkeypatch, tmp_path):
    import errno

    def erofs(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", erofs)
    with pytest.raises(ResourceError) as e:
        check_output(tmp_path / "a" / "b")
    assert e.value.exit_code == 6


@pytest.mark.parametrize("section,key,value,needle", [
    ("evaluation", "batch_size", "1000000000", "batch_size <= 256"),  # before: MemoryError, exit 4
    ("evaluation", "iterations", "1000000000000", "iterations <= 10000"),  # before: accepted, never ends
    ("export", "opset", "99", "13 <= opset <= 21"),  # before: "look for broken residual adds"
    ("calibration", "count", "100000000", "count <= 4096"),
])
def test_recipe_values_past_their_caps_are_refused(tmp_path, section, key, value, needle):
    path = tmp_path / "r.toml"
    path.write_text(f'extends = "x86-cpu"\n[{section}]\n{key} = {value}\n')
    with pytest.raises(BadInputError, match="out of range") as e:
        load_recipe(path)
    assert needle in str(e.value)


def test_folder_digest_of_a_name_that_is_not_utf8(tmp_path):
    name = os.fsdecode(b"bad\xffname.png")
    (tmp_path / name).write_bytes(b"png")
    (tmp_path / "good.png").write_bytes(b"png")
    digest = folder_digest([tmp_path / name, tmp_path / "good.png"])  # before: UnicodeEncodeError, exit 4
    assert len(digest) == 64
    (tmp_path / name).rename(tmp_path / os.fsdecode(b"bad\xfename.png"))
    assert folder_digest([tmp_path / os.fsdecode(b"bad\xfename.png"), tmp_path / "good.png"]) != digest


# ---------------------------------------------------------------- ONNX inputs


def _tiny_onnx(weight: np.ndarray, quantized: bool = False) -> onnx.ModelProto:
    """x (1,3,4,4) -> Conv(w) -> GlobalAveragePool -> Flatten: a real model ONNX Runtime runs."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
                 helper.make_node("Conv", ["dq", "w"], ["c"], name="conv")]
    nodes += [helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"), helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_with_nan_initializer_is_refused_naming_it(tmp_path):
    from resnext_deploy.pipeline.commands import check_file

    w = np.ones((5, 3, 1, 1), np.float32)
    w[2, 1] = np.nan
    onnx.save(_tiny_onnx(w), str(tmp_path / "nan.onnx"))
    with pytest.raises(BadInputError, match="NaN or Inf") as e:  # before: check exit 0, build "scale issue" exit 4
        check_file(tmp_path / "nan.onnx")
    assert "'w'" in str(e.value)


def test_already_quantized_onnx_as_build_source_is_refused(tmp_path):
    from resnext_deploy.models.onnx_inputs import scan_onnx

    path = tmp_path / "qdq.onnx"
    onnx.save(_tiny_onnx(np.ones((5, 3, 1, 1)), quantized=True), str(path))
    with pytest.raises(BadInputError, match="already quantized"):  # before: "two nodes with same node name", exit 4
        scan_onnx(path, quantized_ok=False)
    scan_onnx(path)  # compile and evaluate take it as it is


def _save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)


def _relocate(path: Path, location: str) -> None:
    """Point the model's first initializer at ``location``: onnx refuses to write such paths, so edited by hand."""
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(proto.SerializeToString())


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    from resnext_deploy.models.onnx_inputs import scan_onnx

    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.onnx"
    _save_external(_tiny_onnx(np.ones((5, 3, 1, 1))), path, "secret.data")
    (tmp_path / "models" / "secret.data").rename(tmp_path / "secret.data")
    _relocate(path, "../secret.data")
    with pytest.raises(BadInputError, match="outside the model's folder"):
        scan_onnx(path)


def test_an_external_data_location_holding_a_nul_byte_is_refused(tmp_path):
    """Found by the fuzz test: os.path raised ValueError (exit 4) on a location with a NUL byte."""
    from resnext_deploy.models.onnx_inputs import scan_onnx

    path = tmp_path / "m.onnx"
    _save_external(_tiny_onnx(np.ones((5, 3, 1, 1))), path, "w.data")
    _relocate(path, "w\x00.data")
    with pytest.raises(BadInputError, match="NUL byte"):
        scan_onnx(path)


def test_external_data_beside_the_model_is_copied_into_the_build(tmp_path):
    import onnxruntime as ort

    from resnext_deploy.models.onnx_inputs import copy_onnx, scan_onnx

    w = np.random.default_rng(0).normal(size=(5, 3, 1, 1)).astype(np.float32)
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    _save_external(_tiny_onnx(w), src, "model.onnx.data")
    scan_onnx(src, quantized_ok=False)
    (tmp_path / "staging").mkdir()
    files = copy_onnx(src, tmp_path / "staging" / "model-fp32.onnx")  # before: the model alone, exit 4 later
    assert [f.name for f in files] == ["model-fp32.onnx", "model-fp32.onnx.data"]
    shutil.rmtree(src.parent)  # the copy stands alone
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    y = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.einsum("oi,bihw->bo", w[:, :, 0, 0], x) / 16, rtol=1e-5, atol=1e-6)
