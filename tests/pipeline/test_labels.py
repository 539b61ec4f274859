"""Validation folders are matched to the model's labels by name; a float model at or below chance is an error.

The finding (issue 19): the demo's labels are "0".."9"; a validation folder holding only 3/ 5/ 7/ was mapped by sorted
position (3 -> class 0, ...), gave float top-1 0 % and `gate PASSED`. Now the subset gives the true top-1, a folder
that is no label of the model (12/) is refused naming it, and a model without labels that gets 0 % is an error.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from resnext_deploy.pipeline.sensitivity import run_onnx_model
from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_CHECKPOINT, DEMO_LABELS, DEMO_PREPROCESSING, DEMO_VAL
from resnext_deploy.errors import EXIT_BAD_INPUT, EXIT_OK, BadInputError
from resnext_deploy.pipeline.commands import evaluate_files, report_from
from resnext_deploy.data.datasets import load_labeled
from resnext_deploy.pipeline.labels import FROM_FOLDERS, chance_top1, require_above_chance, validation_labels
from resnext_deploy.recipes import load_recipe

SUBSET = ("3", "5", "7")


def _val(tmp_path, classes, name="val", per_class=None):
    """A validation folder with the demo's images of ``classes`` (a class not among the demo's gets digit 1's)."""
    root = tmp_path / name
    for c in classes:
        src = DEMO_VAL / (c if c in DEMO_LABELS else "1")
        files = sorted(src.iterdir())[:per_class]
        (root / c).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / c / f.name)
    return root


def test_a_subset_of_the_classes_keeps_the_models_indices(tmp_path):
    val = _val(tmp_path, SUBSET, per_class=4)
    got = load_labeled(val, DEMO_PREPROCESSING, labels=DEMO_LABELS)
    assert got.classes == list(SUBSET) and sorted(set(got.labels.tolist())) == [3, 5, 7]
    assert all(str(lab) == p.parent.name for p, lab in zip(got.paths, got.labels))
    # without labels (the demo's training, or a model that has none): by sorted position, as before
    assert sorted(set(load_labeled(val, DEMO_PREPROCESSING).labels.tolist())) == [0, 1, 2]


def test_a_folder_that_is_no_label_of_the_model_is_refused_by_name(tmp_path):
    val = _val(tmp_path, SUBSET + ("12",), per_class=2)
    with pytest.raises(BadInputError) as err:
        load_labeled(val, DEMO_PREPROCESSING, labels=DEMO_LABELS, labels_from="the model")
    text = str(err.value)
    assert "subfolder '12' that is not a label of the model" in text and "(from the model)" in text
    assert "'3'" not in text.split("labels")[0]  # only the stranger is named as one


def test_a_model_without_labels_takes_the_sorted_folders_and_says_so_once(tmp_path, caplog):
    val = _val(tmp_path, ("b", "a"), per_class=1)
    with caplog.at_level("WARNING"):
        named = validation_labels(val, None)
    assert named.labels == ["a", "b"] and named.from_folders and named.origin == FROM_FOLDERS
    said = [r for r in caplog.records if "carries no labels" in r.getMessage()]
    assert len(said) == 1 and "0=a, 1=b" in said[0].getMessage()
    assert validation_labels(val, ["x", "a", "b"]).labels == ["x", "a", "b"]  # the model's own win
    recorded = validation_labels(val, None, recorded=(["b", "a"], "build manifest M"))
    assert recorded.labels == ["b", "a"] and recorded.origin == "build manifest M"


def test_chance_is_one_over_the_classes_present():
    assert chance_top1(3, 10) == pytest.approx(1 / 3) and chance_top1(10, 10) == pytest.approx(0.1)
    assert chance_top1(1, 10) == pytest.approx(0.1)  # one class present: a uniform guess among the outputs
    labels = np.array([3, 5, 7, 3])
    require_above_chance(0.34, labels, 10, "v", "the model")
    for top1 in (0.0, 1 / 3):  # at chance is refused too
        with pytest.raises(BadInputError, match=r"validation labels do not match the model.*\(33.33 % = 1/3"):
            require_above_chance(top1, labels, 10, "v", "the model")


def test_a_three_class_subset_of_the_demo_builds_with_the_true_top1_and_a_foreign_folder_is_refused(tmp_path, fast_recipe):
    val = _val(tmp_path, SUBSET)
    out = tmp_path / "b"
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(fast_recipe), "--val", str(val), "--out", str(out)])
    assert res.exit_code == EXIT_OK, res.output
    report = json.loads((out / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["results"]}
    assert report["dataset"]["validation_classes"] == list(SUBSET) and report["model"]["labels_from"] == "the model"
    # the true top-1: the same FP32 model, those images, labelled with the model's own indices
    images = load_labeled(val, DEMO_PREPROCESSING, 100, labels=DEMO_LABELS)  # the recipe's evaluation.limit
    truth = float(np.mean(np.argmax(run_onnx_model(out / "onnx" / "model-fp32.onnx", images.data), 1) == images.labels))
    assert rows["onnx-fp32"]["top1"] == pytest.approx(truth) and truth > 0.9  # the full set's is ~99 %; the bug gave 0
    assert all(r["top1"] > 0.9 for r in rows.values())
    assert not any(c["value"] is None for c in report["gate"]["checks"] if not c.get("skipped"))

    foreign = _val(tmp_path, SUBSET + ("12",), "foreign", per_class=3)
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(fast_recipe), "--val", str(foreign), "--out", str(tmp_path / "f")])
    assert res.exit_code == EXIT_BAD_INPUT and "subfolder '12' that is not a label of the model" in res.output
    assert not (tmp_path / "f").exists() and "Traceback" not in res.output


@pytest.fixture(scope="module")
def bare_build(tmp_path_factory, fast_recipe):
    """The demo's weights as a bare state_dict (no labels, no preprocessing), built on the full validation set."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("bare")
    state = torch.load(DEMO_CHECKPOINT, weights_only=True)["state_dict"]
    torch.save(state, d / "bare.pth")
    recipe = d / "bare.toml"
    pre = DEMO_PREPROCESSING
    recipe.write_text(f'extends = "{fast_recipe}"\n[preprocess]\nresize = {pre.resize}\ncrop = {pre.crop}\n'
                      f"mean = {list(pre.mean)}\nstd = {list(pre.std)}\n")
    args = ["--model", str(d / "bare.pth"), "--arch", "resnext_demo", "--num-classes", "10", "--recipe", str(recipe),
            "--calib", str(DEMO_CALIB)]
    said = _Said()
    logging.getLogger("resnext_deploy").addHandler(said)
    try:
        res = CliRunner().invoke(cli, ["build", *args, "--val", str(DEMO_VAL), "--out", str(d / "builds" / "x86-cpu")])
    finally:
        logging.getLogger("resnext_deploy").removeHandler(said)
    assert res.exit_code == EXIT_OK, res.output
    return {"dir": d, "out": d / "builds" / "x86-cpu", "args": args, "recipe": recipe, "warnings": said.lines}


class _Said(logging.Handler):
    """The warnings a build logs (what the CLI shows on stderr)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_model_without_labels_records_the_folder_names_and_says_so(bare_build):
    assert len([w for w in bare_build["warnings"] if "carries no labels" in w]) == 1
    manifest = json.loads((bare_build["out"] / "manifest.json").read_text())
    assert manifest["labels"] == manifest["model"]["labels"] == DEMO_LABELS
    assert manifest["model"]["labels_from"] == FROM_FOLDERS


def test_later_stages_and_builds_of_a_model_without_labels_check_against_the_recorded_ones(bare_build, tmp_path):
    subset, foreign = _val(tmp_path, SUBSET), _val(tmp_path, SUBSET + ("12",), "foreign", per_class=2)
    onnx = bare_build["out"] / "onnx"
    recipe = load_recipe(bare_build["recipe"])
    # a stage by path on the build's files: the manifest's labels, so 3/ 5/ 7/ are classes 3, 5, 7
    ev = evaluate_files(onnx / "model-fp32.onnx", [onnx / "model-int8-uint8.onnx"], subset, recipe)
    assert ev["model"]["labels_from"].startswith("build manifest") and ev["dataset"]["validation_classes"] == list(SUBSET)
    assert all(r["top1"] > 0.9 for r in ev["results"])
    # `report` on an evaluation JSON whose reference sits at chance (written by hand, or by an older version): refused
    doctored = tmp_path / "ev.json"
    ev["results"][0]["top1"] = 0.2
    doctored.write_text(json.dumps(ev))
    with pytest.raises(BadInputError, match=r"validation labels do not match the model.*20.00 %.*\(33.33 % = 1/3"):
        report_from(doctored, recipe)
    with pytest.raises(BadInputError, match="subfolder '12' that is not a label of the model.*from build manifest"):
        evaluate_files(onnx / "model-fp32.onnx", [], foreign, recipe)
    # a later build of the same file beside the first (build/<model>/<target>/): the labels that build recorded
    res = CliRunner().invoke(cli, ["-q", "build", *bare_build["args"], "--val", str(foreign),
                                   "--out", str(bare_build["out"].parent / "x86-cpu-vnni")])
    assert res.exit_code == EXIT_BAD_INPUT and "subfolder '12'" in res.output and "the earlier build of this model" in res.output
    # a build from the build's own ONNX: the labels its manifest recorded
    res = CliRunner().invoke(cli, ["-q", "build", "--model", str(onnx / "model-fp32.onnx"), "--recipe", str(bare_build["recipe"]),
                                   "--calib", str(DEMO_CALIB), "--val", str(foreign), "--out", str(tmp_path / "from-onnx")])
    assert res.exit_code == EXIT_BAD_INPUT and "subfolder '12'" in res.output and "build manifest" in res.output


def test_a_float_model_at_chance_is_an_error_not_a_passed_gate(bare_build, tmp_path):
    """The finding with a model that has no labels and nothing recorded: 3/ 5/ 7/ become classes 0, 1, 2."""
    subset = _val(tmp_path, SUBSET)
    # by path: an ONNX with no sidecar and no build around it, preprocessing given by the user
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(bare_build["out"] / "onnx" / "model-fp32.onnx", alone / "m.onnx")
    recipe = load_recipe(bare_build["recipe"])
    with pytest.raises(BadInputError, match=r"validation labels do not match the model: the float model's top-1 .* is 0.00 %"):
        evaluate_files(alone / "m.onnx", [], subset, recipe)
    # a whole build, nothing recorded anywhere near its --out
    out = tmp_path / "isolated" / "x86-cpu"
    res = CliRunner().invoke(cli, ["-q", "build", *bare_build["args"], "--val", str(subset), "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "validation labels do not match the model" in res.output and "33.33 % = 1/3" in res.output
    assert "gate PASSED" not in res.output and not out.exists()


def test_an_earlier_build_counts_only_when_it_is_ours_and_of_the_same_file(tmp_path):
    from resnext_deploy.buildfolder.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION
    from resnext_deploy.pipeline.labels import previous_build_labels

    def manifest(d, sha, labels, schema=MANIFEST_SCHEMA):
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({
            "schema": schema, "schema_version": MANIFEST_SCHEMA_VERSION, "inputs": {"model": {"sha256": sha}},
            "model": {"labels": labels}, "labels": labels}))

    root = tmp_path / "build" / "m"
    manifest(root / "a-other-model", "f" * 64, ["x", "y"])
    manifest(root / "b-not-ours", "a" * 64, ["p", "q"], schema="someone-else")
    (root / "c-user-folder").mkdir()
    assert previous_build_labels(root / "x86-cpu", "a" * 64) is None
    manifest(root / "d-same-model", "a" * 64, ["0", "1", "2"])
    labels, where = previous_build_labels(root / "x86-cpu", "a" * 64)
    assert labels == ["0", "1", "2"] and where.endswith("d-same-model/manifest.json")
    manifest(root / "x86-cpu", "a" * 64, ["9", "8"])  # --out itself comes first
    assert previous_build_labels(root / "x86-cpu", "a" * 64)[0] == ["9", "8"]
