"""Stages run by path on a build's artifacts take the build's preprocessing, labels and folders from its manifest;
an ONNX whose preprocessing nobody recorded is refused (exit 2) instead of evaluated on a guess."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_VAL
from resnext_deploy.errors import BadInputError
from resnext_deploy.pipeline.commands import evaluate_files, model_meta
from resnext_deploy.pipeline.source import data_folders
from resnext_deploy.recipes import load_recipe


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args])


def _artifact_paths(build):
    """Every artifact of the build a backend here runs, by path, with the name the build gave it."""
    return {a["name"]: build.out_dir / a["path"] for a in build.manifest["artifacts"] if a["backend"] in ("onnxruntime", "openvino")}


def test_evaluate_by_path_reproduces_the_build_report(demo_build, tmp_path):
    fp32 = demo_build.out_dir / "onnx" / "model-fp32.onnx"
    arts = _artifact_paths(demo_build)
    assert {"onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"} <= set(arts)
    out = tmp_path / "eval.json"
    res = run("evaluate", *map(str, arts.values()), "--reference", str(fp32), "--out", str(out))  # no other options
    assert res.exit_code == 0, res.output
    ev = json.loads(out.read_text())
    assert ev["preprocessing_from"].startswith("build manifest") and ev["preprocessing"]["crop"] == 32
    assert ev["dataset"]["validation"] == demo_build.manifest["inputs"]["validation"]["folder"]
    built = {r["artifact"]: r for r in demo_build.report["results"]}
    got = {r["artifact"]: r for r in ev["results"]}
    assert set(arts) | {"onnx-fp32"} <= set(got)
    for name in set(arts) | {"onnx-fp32"}:
        assert got[name]["images"] == built[name]["images"]
        assert got[name]["top1"] == built[name]["top1"], name
        assert got[name]["agreement"] == built[name]["agreement"], name
    assert built["onnx-fp32"]["top1"] > 0.95  # the digits model's own number, not the 62% of ImageNet preprocessing


def test_quantize_a_builds_fp32_onnx_with_no_extra_options(demo_build, tmp_path):
    fp32 = demo_build.out_dir / "onnx" / "model-fp32.onnx"
    res = run("quantize", "--onnx", str(fp32), "--out", str(tmp_path / "q.onnx"))
    assert res.exit_code == 0, res.output
    side = json.loads((tmp_path / "q.onnx.json").read_text())
    assert side["preprocessing"] == demo_build.manifest["preprocessing"]
    assert side["labels"] == demo_build.manifest["model"]["labels"]
    assert side["calibration"]["folder"] == demo_build.manifest["inputs"]["calibration"]["folder"]
    assert side["build"]["artifact"] == "onnx-fp32"
    # and the next stage by path reads that sidecar: evaluating it needs nothing more either
    res = run("evaluate", str(tmp_path / "q.onnx"), "--reference", str(fp32), "--out", str(tmp_path / "e.json"))
    assert res.exit_code == 0, res.output
    top1 = {r["artifact"]: r["top1"] for r in json.loads((tmp_path / "e.json").read_text())["results"]}
    assert top1["onnx-int8-uint8"] > 0.9


@pytest.fixture()
def bare(demo_build, tmp_path):
    """The build's FP32 ONNX copied out of the build: no sidecar, no manifest."""
    path = tmp_path / "bare.onnx"
    shutil.copy(demo_build.out_dir / "onnx" / "model-fp32.onnx", path)
    return path


def test_bare_onnx_of_unknown_preprocessing_is_refused(bare, tmp_path):
    for args in (["evaluate", str(bare), "--reference", str(bare), "--val", str(DEMO_VAL)],
                 ["quantize", "--onnx", str(bare), "--calib", str(DEMO_CALIB), "--out", str(tmp_path / "q.onnx")],
                 ["sensitivity", "--onnx", str(bare), "--out", str(tmp_path / "s")]):
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        out = res.output
        assert out.startswith("error: The preprocessing of ") and "Traceback" not in out
        assert "no sidecar (bare.onnx.json)" in out and "(batch, 3, 32, 32) gives the crop size 32" in out
        assert "--preprocessing FILE.json" in out and "--preprocessing imagenet" in out and "[preprocess]" in out
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "s").exists()


def test_bare_onnx_with_the_preprocessing_given_matches_the_build(bare, demo_build, tmp_path):
    manifest = demo_build.out_dir / "manifest.json"
    res = run("evaluate", "--reference", str(bare), "--preprocessing", str(manifest), "--val",
              demo_build.manifest["inputs"]["validation"]["folder"], "--out", str(tmp_path / "e.json"))
    assert res.exit_code == 0, res.output
    (ref,) = json.loads((tmp_path / "e.json").read_text())["results"]
    built = next(r for r in demo_build.report["results"] if r["artifact"] == "onnx-fp32")
    assert ref["top1"] == built["top1"]


def test_bare_onnx_takes_its_input_size_from_its_static_shape(bare):
    meta = model_meta(bare, load_recipe(target="x86-cpu"), preprocessing="imagenet")
    assert meta.preprocessing.crop == 32 and meta.preprocessing.resize == 37
    assert "from the input shape" in meta.origin
    with pytest.raises(BadInputError, match="disagrees with the input shape"):
        model_meta(bare, load_recipe(target="x86-cpu"), input_size=224, preprocessing="imagenet")


def test_bare_onnx_gets_no_demo_images(bare, tmp_path):
    res = run("quantize", "--onnx", str(bare), "--preprocessing", "imagenet", "--out", str(tmp_path / "q.onnx"))
    assert res.exit_code == 2, res.output
    assert "needs --calib" in res.output and "only for the demo model" in res.output
    with pytest.raises(BadInputError, match="needs --val"):
        evaluate_files(bare, [], None, load_recipe(target="x86-cpu"), preprocessing="imagenet")


def test_data_folders_one_behaviour():
    recipe = load_recipe(target="x86-cpu")
    assert data_folders(True, recipe) == (DEMO_CALIB, DEMO_VAL)
    with pytest.raises(BadInputError, match="needs --calib and --val"):
        data_folders(False, recipe)
    assert data_folders(False, recipe, need=("val",), recorded={"val": "v"}) == (None, __import__("pathlib").Path("v"))


def test_compile_a_builds_qdq_onnx_by_path_keeps_its_metadata(demo_build, tmp_path):
    qdq = demo_build.out_dir / "onnx" / "model-int8-uint8.onnx"
    res = run("compile", "--onnx", str(qdq), "--backend", "openvino", "--precision", "int8", "--out", str(tmp_path / "ov"))
    assert res.exit_code == 0, res.output
    (xml,) = (tmp_path / "ov").glob("*.xml")
    side = json.loads((tmp_path / "ov" / (xml.name + ".json")).read_text())
    assert side["preprocessing"] == demo_build.manifest["preprocessing"]
    assert side["build"]["artifact"] == "onnx-int8-uint8"
