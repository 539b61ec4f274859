"""The on-device runtime on the demo build: same results as the evaluate stage, every input form, no torch,
integrity checks, concurrency, the `predict` command and the example script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnext_deploy import backends, runtime
from resnext_deploy.cli import cli
from resnext_deploy.data.datasets import load_labeled
from resnext_deploy.errors import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_DEPENDENCY,
    ArtifactIntegrityError,
    BadInputError,
    DeployError,
    MissingDependencyError,
)
from resnext_deploy.evaluation.evaluate import predict_all, topk_accuracy
from resnext_deploy.preprocess import Preprocessing, preprocess_paths

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ["openvino-int8", "openvino-fp32", "onnxruntime-int8", "onnxruntime-fp32"]
needs_openvino = pytest.mark.skipif(not backends.get("openvino").available(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def build_dir(demo_build) -> Path:
    return demo_build.out_dir


@pytest.fixture(scope="module")
def valset(demo_build):
    spec = Preprocessing.from_dict(demo_build.manifest["preprocessing"])
    return load_labeled(demo_build.manifest["inputs"]["validation"]["folder"], spec)


@pytest.fixture(scope="module")
def ort_fp32(build_dir):
    with runtime.load(build_dir, artifact="onnxruntime-fp32") as clf:
        yield clf


@pytest.fixture()
def build_copy(build_dir, tmp_path) -> Path:
    """A copy of the build a test may damage."""
    return Path(shutil.copytree(build_dir, tmp_path / "build"))


def _artifact(manifest, name):
    return next(a for a in manifest["artifacts"] if a["name"] == name)


# -- same numbers as the evaluate stage ---------------------------------------------------------------


@pytest.mark.parametrize("name", COMPILED)
def test_runtime_equals_the_evaluate_stage(demo_build, valset, name):
    art = _artifact(demo_build.manifest, name)
    if backends.get(art["backend"]).available() is False:
        pytest.skip(f"{art['backend']} is not installed")
    # What the evaluate stage ran: the backend's runner with the recipe's settings, on the loaded images.
    settings = demo_build.manifest["recipe"]["backends"][art["backend"]]
    with backends.get(art["backend"]).load(demo_build.out_dir / art["path"], settings) as runner:
        expected = predict_all(runner, valset.data, demo_build.manifest["recipe"]["evaluation"]["batch_size"])
    with runtime.load(demo_build.out_dir, artifact=name) as clf:
        assert (clf.backend, clf.precision, clf.artifact.name) == (art["backend"], art["precision"], name)
        preds = clf.predict(valset.paths, top_k=5)
    logits = np.stack([p.logits for p in preds])
    np.testing.assert_array_equal(logits, expected)
    row = next(r for r in demo_build.report["results"] if r["artifact"] == name)
    assert topk_accuracy(logits, valset.labels, 1) == row["top1"]
    assert topk_accuracy(logits, valset.labels, 5) == row["top5"]
    assert [p.index for p in preds] == list(np.argmax(expected, axis=1))
    assert [p.source for p in preds] == [str(p) for p in valset.paths]


def test_prediction_fields(ort_fp32, valset):
    (p,) = ort_fp32.predict(str(valset.paths[0]), top_k=3)
    assert p.source == str(valset.paths[0])
    assert p.logits.shape == (10,) and p.probabilities.shape == (10,)
    assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    e = np.exp(p.logits.astype(np.float64) - p.logits.max())
    np.testing.assert_allclose(p.probabilities, e / e.sum(), rtol=1e-6)
    assert len(p.top_k) == 3 and p.top_k[0] == (p.index, p.label, p.probability)
    assert [t[2] for t in p.top_k] == sorted((t[2] for t in p.top_k), reverse=True)
    assert p.label == ort_fp32.labels[p.index] == valset.paths[0].parent.name
    assert len(ort_fp32.predict(valset.paths[:1], top_k=50)[0].top_k) == 10  # capped at the class count
    d = p.to_dict(logits=True)
    assert json.loads(json.dumps(d))["top_k"][0] == {"index": p.index, "label": p.label, "probability": p.probability}
    assert len(d["logits"]) == 10


# -- every input form ---------------------------------------------------------------------------------


def test_every_input_form_gives_the_same_logits(ort_fp32, valset):
    paths = valset.paths[:6]
    expected = ort_fp32.logits([str(p) for p in paths])
    gray = [np.asarray(Image.open(p).convert("L")) for p in paths]  # the demo images are 8-bit grayscale
    rgb = [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
    forms = {
        "str paths": [str(p) for p in paths],
        "Path paths": list(paths),
        "PIL images": [Image.open(p) for p in paths],
        "uint8 HxW": gray,
        "uint8 HxWx1": [g[:, :, None] for g in gray],
        "uint8 HxWx3": rgb,
        "uint8 HxWx4": [np.dstack([r, np.full(r.shape[:2], 255, np.uint8)]) for r in rgb],
        "uint8 NxHxWx3": np.stack(rgb),
        "float32 NCHW": preprocess_paths(paths, ort_fp32.preprocessing),
        "float32 CHW each": list(preprocess_paths(paths, ort_fp32.preprocessing)),
        "float64 NCHW": preprocess_paths(paths, ort_fp32.preprocessing).astype(np.float64),
        "generator": (str(p) for p in paths),
        "mixed": [str(paths[0]), Image.open(paths[1]), gray[2], np.stack(rgb[3:5]), preprocess_paths(paths[5:], ort_fp32.preprocessing)],
    }
    for form, inputs in forms.items():
        np.testing.assert_array_equal(ort_fp32.logits(inputs), expected, err_msg=form)
    one = ort_fp32.predict(rgb[0])
    assert len(one) == 1 and one[0].source == "<array 0>"
    assert [p.source for p in ort_fp32.predict(np.stack(rgb[:2]))] == ["<array 0[0]>", "<array 0[1]>"]
    assert ort_fp32.predict([]) == []


def test_resized_color_images_agree_across_forms(ort_fp32, tmp_path):
    """A non-square RGB image larger than the crop goes through resize + crop the same way from every form."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 53, 3), dtype=np.uint8)
    path = tmp_path / "color.png"
    Image.fromarray(arr).save(path)
    expected = ort_fp32.logits(str(path))
    chw = ort_fp32.preprocessing
    for form in (Image.fromarray(arr), arr, arr[None], preprocess_paths([path], chw)):
        np.testing.assert_array_equal(ort_fp32.logits(form), expected)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((2, 32, 32, 3), np.float32), ["float array of shape (2, 32, 32, 3)", "(N, 3, 32, 32)"]),
        (np.zeros((1, 3, 64, 64), np.float32), ["(1, 3, 64, 64)", "(N, 3, 32, 32)"]),
        (np.full((1, 3, 32, 32), np.nan, np.float32), ["NaN"]),
        (np.zeros((32, 32), np.uint16), ["uint16", "uint8"]),
        (np.zeros((32, 32, 5), np.uint8), ["(32, 32, 5)", "HxWxC"]),
        (np.zeros((1, 2, 32, 32, 3), np.uint8), ["(1, 2, 32, 32, 3)"]),
        ({"image": 1}, ["dict"]),
        ([b"\x89PNG"], ["bytes"]),
        (12, ["int"]),
    ],
)
def test_bad_inputs_are_clear_errors(ort_fp32, bad, words):
    with pytest.raises(BadInputError) as err:
        ort_fp32.predict(bad)
    for w in words:
        assert w in str(err.value)


def test_bad_paths_and_arguments(ort_fp32, tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        ort_fp32.predict(str(tmp_path / "nope.png"))
    with pytest.raises(BadInputError, match="is a folder"):
        ort_fp32.predict(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadInputError, match="Cannot read image"):
        ort_fp32.predict([broken])
    with pytest.raises(BadInputError, match="top_k"):
        ort_fp32.predict(np.zeros((32, 32), np.uint8), top_k=0)


# -- choosing the artifact ------------------------------------------------------------------------------


@needs_openvino
def test_auto_prefers_openvino_int8_and_says_so(build_dir, caplog):
    caplog.set_level("INFO", logger="resnext_deploy")
    with runtime.load(build_dir) as clf:
        assert (clf.backend, clf.precision, clf.artifact.name) == ("openvino", "int8", "openvino-int8")
        assert clf.artifact.path == "openvino/model-int8.xml"
    assert "openvino-int8" in caplog.text


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"precision": "fp32"}, "openvino-fp32"),
        ({"backend": "onnxruntime"}, "onnxruntime-int8"),
        ({"backend": "onnxruntime", "precision": "fp32"}, "onnxruntime-fp32"),
        ({"artifact": "onnx-fp32"}, "onnx-fp32"),  # the float reference, run by ONNX Runtime
    ],
)
def test_backend_and_precision_are_selectable(build_dir, kwargs, name):
    if kwargs.get("precision") == "fp32" and "backend" not in kwargs and not backends.get("openvino").available():
        pytest.skip("openvino is not installed")
    with runtime.load(build_dir, **kwargs) as clf:
        assert clf.artifact.name == name
        assert clf.backend == ("onnxruntime" if name.startswith("onnx") else name.split("-")[0])


def test_candidates_rank_engines_then_openvino_then_onnxruntime_int8_first(demo_build):
    manifest = json.loads(json.dumps(demo_build.manifest))
    engine = {"name": "tensorrt-int8", "path": "tensorrt/model-int8.engine", "kind": "tensorrt-engine",
              "backend": "tensorrt", "precision": "int8", "files": {}}
    fp16 = dict(engine, name="tensorrt-fp16", path="tensorrt/model-fp16.engine", precision="fp16")
    s8 = dict(engine, name="onnx-int8-int8", path="onnx/model-int8-int8.onnx", kind="onnx-qdq", backend="onnx")
    manifest["artifacts"] += [fp16, engine]
    # an x86 build has no TensorRT-flavour Q/DQ model: add one where a Jetson build lists it, before the uint8 one
    at = next(i for i, a in enumerate(manifest["artifacts"]) if a["name"] == "onnx-int8-uint8")
    manifest["artifacts"].insert(at, s8)
    names = [c.artifact.name for c in runtime.candidates(manifest)]
    assert names == [
        "tensorrt-int8", "tensorrt-fp16", "openvino-int8", "openvino-fp32", "onnxruntime-int8", "onnxruntime-fp32",
        "onnx-int8-int8", "onnx-int8-uint8", "onnx-fp32",
    ]
    if "tensorrt" in backends.available():
        pytest.skip("TensorRT is installed here: the fallback below is for machines without it")
    # No TensorRT here: auto falls back to the next runnable artifact; asking for TensorRT says what runs.
    expected = "openvino-int8" if backends.get("openvino").available() else "onnxruntime-int8"
    assert runtime.choose(manifest).artifact.name == expected
    with pytest.raises(DeployError) as err:
        runtime.choose(manifest, backend="tensorrt")
    assert "tensorrt" in str(err.value) and f"Available on this machine: {expected}" in str(err.value)


def test_a_bundle_without_engines_runs_its_onnx_in_onnxruntime(build_copy, caplog):
    """A Jetson bundle ships ONNX models and builds engines on the device; before that, ONNX Runtime runs the ONNX."""
    path = build_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["backend"] == "onnx"]
    manifest["bundle"] = {"version": 1}
    path.write_text(json.dumps(manifest))
    caplog.set_level("WARNING", logger="resnext_deploy")
    int8_onnx = next(a["name"] for a in manifest["artifacts"] if a["precision"] == "int8")
    with runtime.load(build_copy) as clf:
        assert (clf.artifact.name, clf.backend) == (int8_onnx, "onnxruntime")
        assert clf.predict(np.zeros((32, 32), np.uint8))[0].label in clf.labels
    assert "compile --bundle" in caplog.text
    with pytest.raises(BadInputError, match="engines are not built yet.*compile --bundle"):
        runtime.load(build_copy, backend="tensorrt")


def test_unknown_or_absent_choices_list_what_the_build_has(build_dir):
    with pytest.raises(BadInputError, match="no artifact for backend tensorrt.*openvino-int8"):
        runtime.load(build_dir, backend="tensorrt")
    with pytest.raises(BadInputError, match="no artifact for precision fp16.*onnxruntime-fp32"):
        runtime.load(build_dir, precision="fp16")
    with pytest.raises(BadInputError, match="Unknown backend 'tflite'"):
        runtime.load(build_dir, backend="tflite")
    with pytest.raises(BadInputError, match="no artifact for artifact openvino-fp16"):
        runtime.load(build_dir, artifact="openvino-fp16")


def test_settings_come_from_the_recipe_and_can_be_overridden(build_dir):
    with runtime.load(build_dir, backend="onnxruntime") as clf:
        assert clf.settings["threads"] == 0 and clf.settings["graph_optimization"] == "extended"
    with runtime.load(build_dir, backend="onnxruntime", settings={"threads": 1}) as clf:
        assert clf.details["threads"] == 1
    if backends.get("openvino").available():
        with runtime.load(build_dir, backend="openvino", settings={"threads": 1, "performance_hint": "THROUGHPUT"}) as clf:
            assert clf.details["config"]["INFERENCE_NUM_THREADS"] == "1"
            assert clf.details["config"]["PERFORMANCE_HINT"] == "THROUGHPUT"
            assert clf.details["config"]["INFERENCE_PRECISION_HINT"] == "f32"  # from the recipe
    with pytest.raises(BadInputError, match="Unknown onnxruntime setting 'thread'.*threads"):
        runtime.load(build_dir, backend="onnxruntime", settings={"thread": 1})


# -- what load refuses ------------------------------------------------------------------------------


def test_a_tampered_artifact_is_refused(build_copy):
    target = build_copy / "onnxruntime" / "model-int8.ort.onnx"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"onnxruntime-int8 .*onnxruntime/model-int8.ort.onnx: sha256 differs"):
        runtime.load(build_copy, backend="onnxruntime")
    # Only what runs is checked: the untouched FP32 artifact of the same build still loads.
    with runtime.load(build_copy, backend="onnxruntime", precision="fp32") as clf:
        assert clf.artifact.name == "onnxruntime-fp32"


@needs_openvino
def test_verify_false_skips_the_check(build_copy):
    weights = build_copy / "openvino" / "model-int8.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # a changed weight still loads: only the hash can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="openvino/model-int8.bin"):
        runtime.load(build_copy)
    with runtime.load(build_copy, verify=False) as clf:
        assert clf.artifact.name == "openvino-int8"


def test_a_damaged_model_loaded_without_verification_is_a_clear_error(build_copy):
    (build_copy / "onnxruntime" / "model-int8.ort.onnx").write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="onnxruntime could not load onnxruntime-int8"):
        runtime.load(build_copy, backend="onnxruntime", verify=False)


def test_wrong_schema_version_is_refused(build_copy):
    path = build_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="manifest schema version 2; this resnext-deploy reads version 1"):
        runtime.load(build_copy)
    manifest["schema_version"], manifest["schema"] = 1, "someone-else/manifest"
    path.write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="not a resnext-deploy manifest"):
        runtime.load(path)  # the manifest file itself is accepted as the path too


def test_missing_files_and_paths(build_copy, tmp_path):
    (build_copy / "onnxruntime" / "model-int8.ort.onnx").unlink()
    with pytest.raises(BadInputError, match="onnxruntime/model-int8.ort.onnx are missing"):
        runtime.load(build_copy, backend="onnxruntime")
    with pytest.raises(BadInputError, match="does not exist"):
        runtime.load(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="No manifest.json"):
        runtime.load(tmp_path)
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(BadInputError, match="Unpack it first"):
        runtime.load(archive)


def test_a_closed_classifier_says_so(build_dir):
    clf = runtime.load(build_dir, backend="onnxruntime")
    clf.close()
    with pytest.raises(BadInputError, match="closed"):
        clf.predict(np.zeros((32, 32), np.uint8))


# -- one classifier, many threads -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openvino-int8", "onnxruntime-int8"])
def test_eight_threads_give_the_sequential_results(build_dir, valset, name):
    if name.startswith("openvino") and not backends.get("openvino").available():
        pytest.skip("openvino is not installed")
    images = [str(p) for p in valset.paths[:50]]
    with runtime.load(build_dir, artifact=name) as clf:
        sequential = [clf.predict(img)[0] for img in images]
        start = threading.Barrier(8)

        def worker(t):
            start.wait()  # all eight threads call predict at the same time
            return [(i, clf.predict(images[i])[0]) for i in ((t * 7 + n) % len(images) for n in range(200))]

        with ThreadPoolExecutor(8) as pool:
            results = [r for rs in pool.map(worker, range(8)) for r in rs]
    assert len(results) == 1600
    for i, p in results:
        ref = sequential[i]
        assert (p.index, p.label, p.source) == (ref.index, ref.label, ref.source)
        np.testing.assert_array_equal(p.logits, ref.logits)
        assert p.top_k == ref.top_k


# -- no torch, no onnx, no click on the device ------------------------------------------------------

_NO_TORCH = r"""
import json, sys

class Block:
    # Make importing these fail, as on a device that never installed them.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)

BLOCKED = set(sys.argv[3].split(","))
sys.meta_path.insert(0, Block())
for mod in BLOCKED:
    try:
        __import__(mod)
    except ImportError:
        pass
    else:
        raise SystemExit("could not block " + mod)

from resnext_deploy import runtime
clf = runtime.load(sys.argv[1])
preds = clf.predict(sys.argv[2].split(","), top_k=3)
print(json.dumps({
    "artifact": clf.artifact.name,
    "predictions": [[p.index, p.label, [float(x) for x in p.logits]] for p in preds],
    "loaded": sorted(m for m in BLOCKED | {"torch", "onnx", "click"} if m in sys.modules),
}))
"""

_HEAVY = "torch,torchvision,onnx,onnxslim,click,sklearn,nncf,matplotlib"


@pytest.mark.parametrize(
    "also_blocked, name",
    [("", "openvino-int8"), ("openvino", "onnxruntime-int8"), ("onnxruntime", "openvino-int8")],
    ids=["both-backends", "onnxruntime-only", "openvino-only"],
)
def test_runs_where_torch_and_onnx_cannot_be_imported(build_dir, valset, also_blocked, name):
    if name.startswith("openvino") and not backends.get("openvino").available():
        pytest.skip("openvino is not installed")
    images = [str(p) for p in valset.paths[::50]]
    blocked = _HEAVY + ("," + also_blocked if also_blocked else "")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "toolkit"))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(build_dir), ",".join(images), blocked],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["artifact"] == name
    assert out["loaded"] == []
    with runtime.load(build_dir, artifact=name) as clf:
        expected = clf.predict(images)
    assert [p[:2] for p in out["predictions"]] == [[p.index, p.label] for p in expected]
    np.testing.assert_array_equal(np.asarray([p[2] for p in out["predictions"]], np.float32), np.stack([p.logits for p in expected]))


def test_asking_for_a_backend_whose_package_is_missing(build_dir):
    """openvino not installed (blocked): asking for it is exit-5 advice that lists what can run instead."""
    script = _NO_TORCH.replace("clf = runtime.load(sys.argv[1])", "clf = runtime.load(sys.argv[1], backend='openvino')")
    script = script.replace("from resnext_deploy import runtime", "from resnext_deploy import runtime\nfrom resnext_deploy.errors import DeployError")
    script = script.replace(
        "clf = runtime.load(sys.argv[1], backend='openvino')",
        "try:\n    runtime.load(sys.argv[1], backend='openvino')\nexcept DeployError as e:\n"
        "    print(json.dumps({'type': type(e).__name__, 'code': e.exit_code, 'msg': str(e)})); raise SystemExit(0)",
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "toolkit"))
    proc = subprocess.run([sys.executable, "-c", script, str(build_dir), "x.png", _HEAVY + ",openvino"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["type"] == MissingDependencyError.__name__ and out["code"] == EXIT_MISSING_DEPENDENCY
    assert "'openvino' is not installed" in out["msg"]
    assert "Available on this machine: onnxruntime-int8 (onnxruntime, int8), onnxruntime-fp32" in out["msg"]


# -- the command and the example ---------------------------------------------------------------------------


def test_predict_command_json_and_text(build_dir, valset):
    images = [str(p) for p in valset.paths[::100]]
    res = CliRunner().invoke(cli, ["predict", "--build", str(build_dir), "--backend", "onnxruntime", "--top-k", "2", "--json", *images])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["artifact"], out["backend"], out["precision"]) == ("onnxruntime-int8", "onnxruntime", "int8")
    with runtime.load(build_dir, backend="onnxruntime") as clf:
        expected = clf.predict(images, top_k=2)
    assert [p["label"] for p in out["predictions"]] == [p.label for p in expected]
    assert [p["probability"] for p in out["predictions"]] == [p.probability for p in expected]
    assert all(len(p["top_k"]) == 2 for p in out["predictions"])
    res = CliRunner().invoke(cli, ["predict", "--build", str(build_dir), "--backend", "onnxruntime", "--top-k", "1", images[0]])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"{images[0]}: {expected[0].label} ({expected[0].probability:.2%})"


@needs_openvino
def test_predict_command_errors_exit_2(build_copy, valset):
    img = str(valset.paths[0])
    weights = build_copy / "openvino" / "model-fp32.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    args = ["predict", "--build", str(build_copy), "--precision", "fp32", img]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == EXIT_BAD_INPUT and "sha256 differs" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, args + ["--no-verify"])
    assert res.exit_code == 0, res.output
    for extra in (["--backend", "tensorrt", img], [str(build_copy / "missing.png")]):
        res = CliRunner().invoke(cli, ["predict", "--build", str(build_copy), *extra])
        assert res.exit_code == EXIT_BAD_INPUT, res.output
        assert res.output.startswith("error: ")


def test_example_script_reaches_the_reported_accuracy(demo_build):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "toolkit"))
    val = demo_build.manifest["inputs"]["validation"]["folder"]
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "classify_folder.py"), str(demo_build.out_dir), val],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 + demo_build.report["dataset"]["validation_images"] + 1
    name = lines[0].split()[1]
    row = next(r for r in demo_build.report["results"] if r["artifact"] == name)
    correct, total = lines[-1].split()[1].split("/")
    assert int(correct) / int(total) == row["top1"]
    assert len(Path(__file__).resolve().parents[2].joinpath("examples", "classify_folder.py").read_text().splitlines()) < 30
