"""Recipes that extend a target or another file: layering, provenance, errors; a two-line recipe builds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_BAD_INPUT, EXIT_OK, BadInputError
from resnext_deploy.recipes import DEFAULTS, load_recipe


def _write(path, text):
    path.write_text(text)
    return path


def test_a_recipe_extends_a_target_and_holds_only_what_differs(tmp_path):
    mine = _write(tmp_path / "mine.toml", 'extends = "x86-cpu"\ncalibration.count = 64\n')
    r = load_recipe(mine)
    shipped = load_recipe(target="x86-cpu")
    assert r.target == "x86-cpu" and r.section("calibration")["count"] == 64
    assert r.enabled_backends() == shipped.enabled_backends()
    assert r.backend("openvino") == shipped.backend("openvino")
    assert [(x["kind"], x["name"]) for x in r.layers] == [("target", "x86-cpu"), ("user", str(mine))]
    assert r.provenance["calibration.count"] == f"user:{mine}"
    assert r.provenance["backends.openvino.precisions"] == "target:x86-cpu"
    assert r.provenance["fallback.subset"] == "target:x86-cpu"  # set by the file, to the default's value: still its
    assert r.provenance["export.simplify"] == "default"  # x86-cpu.toml does not set it
    assert set(r.provenance) >= {"gates.baseline.max_top1_drop_vs_baseline", "preprocess"}


def test_a_chain_of_files_and_free_form_tables_merge_key_by_key(tmp_path):
    base = _write(tmp_path / "base.toml", 'extends = "x86-cpu"\n[preprocess]\nresize = 40\ncrop = 32\n')
    (tmp_path / "team").mkdir()
    mine = _write(tmp_path / "team" / "mine.toml", 'extends = "../base.toml"\n[preprocess]\ncrop = 28\n')
    r = load_recipe(mine)
    assert r.section("preprocess") == {"resize": 40, "crop": 28}
    assert [x["kind"] for x in r.layers] == ["target", "user", "user"]
    assert r.provenance["preprocess.resize"].endswith("base.toml") and r.provenance["preprocess.crop"].endswith("mine.toml")


def test_target_and_recipe_together_layer_the_recipe_over_the_target(tmp_path):
    no_base = _write(tmp_path / "gates.toml", "[gates]\nmax_top1_drop = 0.5\n")
    with pytest.raises(BadInputError, match='enables no backend.*extends = "x86-cpu"'):
        load_recipe(no_base)  # alone it builds nothing, and the error says how to build on a target
    r = load_recipe(no_base, "jetson-orin-nano")
    assert r.target == "jetson-orin-nano" and r.enabled_backends() == ["tensorrt"]
    assert r.section("gates")["max_top1_drop"] == 0.5 and r.provenance["gates.max_top1_drop"] == f"user:{no_base}"
    extends = _write(tmp_path / "x.toml", 'extends = "x86-cpu"\n')
    assert load_recipe(extends, "x86-cpu").target == "x86-cpu"
    with pytest.raises(BadInputError, match="--target jetson-orin-nano and the recipe .* extends 'x86-cpu'"):
        load_recipe(extends, "jetson-orin-nano")


@pytest.mark.parametrize("text, match", [
    ('extends = "x86-cpu"\n[calibration]\ncuont = 3\n', "Unknown recipe key 'calibration.cuont' in .*bad.toml"),
    ('extends = "x86-cpux"\n', "Unknown target 'x86-cpux' \\(extends in .*bad.toml\\)"),
    ('extends = "missing.toml"\n', "missing.toml' does not exist"),
    ('extends = "bad.toml"\n', "extends itself"),
    ("extends = 3\n", "extends = 3"),
    ('extends = "x86-cpu"\ngates.baseline.max_top1_drop_vs_baseline = -1\n',
     "gates.baseline.max_top1_drop_vs_baseline = -1 in .*bad.toml: allowed 0 <= max_top1_drop_vs_baseline <= 100"),
    ('extends = "x86-cpu"\ngates.baseline = 2\n', "'gates.baseline' .* must be a table"),
])
def test_bad_recipes_are_named(tmp_path, text, match):
    with pytest.raises(BadInputError, match=match):
        load_recipe(_write(tmp_path / "bad.toml", text))


@pytest.mark.parametrize("key, value, allowed", [
    ("gates.min_agreement", "5", "0 <= min_agreement <= 1"),
    ("gates.max_top1_drop", "-1.0", "0 <= max_top1_drop <= 100"),
    ("gates.min_cosine", "-1.5", "-1 <= min_cosine <= 1"),
    ("gates.min_top1_ratio", "1.01", "0 <= min_top1_ratio <= 1"),
    ("gates.min_agreement_confident", "nan", "0 <= min_agreement_confident <= 1"),
    ("gates.max_latency_ms", "-3.0", "max_latency_ms >= 0"),
    ("gates.baseline.max_size_increase_pct", "-10.0", "max_size_increase_pct >= 0"),
    ("evaluation.batch_size", "0", "1 <= batch_size <= 256"),
    ("evaluation.iterations", "0", "1 <= iterations <= 10000"),
    ("evaluation.limit", "-1", "limit >= 0"),
    ("fallback.subset", "0", "1 <= subset <= 100000"),
])
def test_thresholds_out_of_range_are_refused_up_front_naming_file_key_value_and_range(tmp_path, key, value, allowed):
    bad = _write(tmp_path / "bad.toml", f'extends = "x86-cpu"\n{key} = {value}\n')
    with pytest.raises(BadInputError) as err:
        load_recipe(bad)
    assert f"{key} = {float(value) if '.' in value or value == 'nan' else int(value)!r} in {bad}: allowed {allowed}" in str(err.value)


def test_a_range_error_names_the_file_that_set_the_key_and_lists_every_bad_value(tmp_path):
    base = _write(tmp_path / "base.toml", 'extends = "x86-cpu"\n[gates]\nmin_agreement = 5\n')
    mine = _write(tmp_path / "mine.toml", 'extends = "base.toml"\n[gates]\nmax_top1_drop = -1.0\n')
    with pytest.raises(BadInputError) as err:
        load_recipe(mine)
    text = str(err.value)
    assert f"gates.min_agreement = 5 in {base}" in text and f"gates.max_top1_drop = -1.0 in {mine}" in text
    for target in ("x86-cpu", "x86-cpu-vnni", "x86-gpu", "jetson-orin-nano", "jetson-agx-orin"):
        load_recipe(target=target)  # the shipped recipes are in range


def test_cli_build_refuses_an_out_of_range_recipe_before_building(tmp_path):
    bad = _write(tmp_path / "bad.toml", 'extends = "x86-cpu"\n[gates]\nmin_agreement = 5\nmax_top1_drop = -1.0\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["build", "--recipe", str(bad), "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "gates.min_agreement = 5" in res.output and "allowed 0 <= min_agreement <= 1" in res.output
    assert "gates.max_top1_drop = -1.0" in res.output and str(bad) in res.output
    assert not out.exists() and "Traceback" not in res.output


def test_cli_target_with_recipe_layers_and_recipe_alone_does_not(tmp_path, demo_build):
    no_base = _write(tmp_path / "gates.toml", "[gates]\nmax_top1_drop = 0.5\n")
    runner = CliRunner()
    alone = runner.invoke(cli, ["report", str(demo_build.out_dir), "--recipe", str(no_base)])
    assert alone.exit_code == EXIT_BAD_INPUT and "enables no backend" in alone.output
    layered = runner.invoke(cli, ["report", str(demo_build.out_dir), "--target", "x86-cpu", "--recipe", str(no_base), "--json"])
    assert layered.exit_code == EXIT_OK, layered.output
    thresholds = {c["threshold"] for c in json.loads(layered.output)["gate"]["checks"] if c["metric"] == "top1_drop_pct"}
    assert thresholds == {0.5}


def test_a_two_line_user_recipe_builds_and_the_manifest_says_where_each_value_came_from(tmp_path):
    mine = _write(tmp_path / "mine.toml", 'extends = "x86-cpu"\nevaluation.limit = 100\n')
    out = tmp_path / "b"
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(mine), "--out", str(out)])
    assert res.exit_code == EXIT_OK, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["target"] == "x86-cpu" and report["dataset"]["validation_images"] == 100
    # the target's backends and precisions, inherited: FP32 and INT8 for both
    assert {a["name"] for a in manifest["artifacts"]} >= {"onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"}
    assert [x["kind"] for x in manifest["recipe_layers"]] == ["target", "user"]
    assert manifest["recipe_layers"][1]["sha256"] and manifest["recipe_source"] == str(mine)
    prov = manifest["recipe_provenance"]
    assert prov["evaluation.limit"] == f"user:{mine}" and prov["backends.onnxruntime.precisions"] == "target:x86-cpu"
    assert prov["gates.baseline.max_latency_increase_pct"] == "default"
    assert set(prov) == {k for k in prov if k.split(".")[0] in DEFAULTS}  # every key is a recipe key
    assert manifest["recipe"]["evaluation"]["limit"] == 100
