"""Every bad input named in the issue: one clear paragraph, exit code 2, no traceback, no half-written build."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CHECKPOINT, DEMO_VAL
from resnext_deploy.errors import EXIT_BAD_INPUT
from resnext_deploy.models.resnext import create


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args])


def assert_bad(res, *fragments: str) -> None:
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("error: ")
    for f in fragments:
        assert f in res.output, (f, res.output)


@pytest.fixture()
def small_val(tmp_path):
    """20 demo validation images, 2 per class, ImageFolder layout."""
    val = tmp_path / "val"
    for cls in sorted(DEMO_VAL.iterdir()):
        (val / cls.name).mkdir(parents=True)
        for p in sorted(cls.iterdir())[:2]:
            shutil.copy(p, val / cls.name / p.name)
    return val


def test_missing_checkpoint(tmp_path):
    assert_bad(run("build", "--model", str(tmp_path / "nope.pt"), "--arch", "resnext_demo", "--out", str(tmp_path / "o")), "nope.pt", "does not exist")
    assert not (tmp_path / "o").exists()


def test_truncated_checkpoint(tmp_path):
    data = DEMO_CHECKPOINT.read_bytes()
    bad = tmp_path / "half.pt"
    bad.write_bytes(data[: len(data) // 2])
    assert_bad(run("build", "--model", str(bad), "--arch", "resnext_demo", "--calib", str(DEMO_VAL), "--val", str(DEMO_VAL),
                   "--out", str(tmp_path / "o")), "half.pt", "truncated")
    assert not (tmp_path / "o").exists()


def test_keys_that_do_not_match_the_architecture(tmp_path):
    sd = create("resnext_demo", 10).state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    res = run("check", "--model", str(path), "--arch", "resnext50_32x4d")
    assert_bad(res, "resnext50_32x4d")
    assert "layer4" in res.output or "missing" in res.output.lower()
    # a wrong class count shows the shape mismatch of fc
    res = run("check", "--model", str(path), "--arch", "resnext_demo", "--num-classes", "7")
    assert_bad(res, "fc.weight: checkpoint (10, 256) vs model (7, 256)")


def test_unknown_arch_and_target(tmp_path):
    torch.save(create("resnext_demo").state_dict(), tmp_path / "sd.pt")
    assert_bad(run("check", "--model", str(tmp_path / "sd.pt"), "--arch", "resnext42"), "resnext42", "resnext50_32x4d")
    assert_bad(run("build", "--target", "toaster"), "toaster", "x86-cpu")


def test_bad_recipe_key(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text("[calibration]\nmethd = 'minmax'\n")
    assert_bad(run("build", "--recipe", str(r)), "calibration.methd")
    r.write_text("[calibration]\nmethod = 'kl'\n")
    assert_bad(run("build", "--recipe", str(r)), "'kl'", "entropy")


def test_calibration_folder_missing_empty_or_unreadable(tmp_path, small_val):
    out = tmp_path / "o"
    assert_bad(run("build", "--calib", str(tmp_path / "missing"), "--val", str(small_val), "--out", str(out)), "missing", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad(run("build", "--calib", str(empty), "--val", str(small_val), "--out", str(out)), "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    (junk / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    res = run("build", "--calib", str(junk), "--val", str(small_val), "--out", str(out))
    assert_bad(res, "no readable images", "2 files skipped")
    assert not out.exists()


def test_odd_image_modes_are_converted_and_corrupt_files_skipped(tmp_path):
    from resnext_deploy.data.datasets import load_calibration
    from resnext_deploy.preprocess import Preprocessing

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (40, 50), np.uint8), "L").save(calib / "gray.png")
    Image.fromarray(rng.randint(0, 255, (40, 50), np.uint8), "L").convert("P").save(calib / "palette.gif")
    Image.fromarray(rng.randint(0, 255, (40, 50, 3), np.uint8)).convert("CMYK").save(calib / "cmyk.jpg")
    Image.fromarray(rng.randint(0, 65535, (40, 50)).astype(np.uint16)).save(calib / "deep.png")
    Image.fromarray(rng.randint(0, 255, (40, 50, 4), np.uint8), "RGBA").save(calib / "alpha.png")
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    (calib / "readme.txt").write_text("hi")
    loaded = load_calibration(calib, Preprocessing(resize=32, crop=32))
    assert loaded.data.shape == (5, 3, 32, 32)
    assert np.isfinite(loaded.data).all()
    assert len(loaded.skipped) == 2
    # the 16-bit image is scaled, not clipped: its values spread over the range
    deep = loaded.data[[p.name for p in loaded.paths].index("deep.png")]
    assert deep.std() > 0.5


def test_validation_folder_not_in_class_layout(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("L", (32, 32), i * 50).save(flat / f"{i}.png")
    assert_bad(run("build", "--val", str(flat), "--out", str(tmp_path / "o")), "flat", "class-subfolder")


def test_validation_with_more_classes_than_the_model(tmp_path, small_val):
    (small_val / "zz_extra").mkdir()
    shutil.copy(next((small_val / "0").iterdir()), small_val / "zz_extra" / "x.png")
    # the demo carries labels "0".."9": the extra folder is named, not counted (issue 19: matched by name)
    assert_bad(run("build", "--val", str(small_val), "--out", str(tmp_path / "o")), "'zz_extra'", "not a label of the model")


def test_output_directory_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    assert_bad(run("build", "--out", str(blocker / "sub" / "build")), "not writable", "--out")


def test_channel_mismatch_block_is_reported_before_export(tmp_path):
    model = create("resnext_demo")
    model.layer2[0].downsample = None  # identity shortcut while the main path changes channels and stride
    path = tmp_path / "broken.pt"
    torch.save(model, path)
    res = run("build", "--model", str(path), "--trust-pickle", "--calib", str(DEMO_VAL), "--val", str(DEMO_VAL),
              "--out", str(tmp_path / "o"))
    assert_bad(res, "layer2.0", "(1, 128, 16, 16)", "(1, 64, 32, 32)")
    assert not (tmp_path / "o").exists()
    assert_bad(run("check", "--model", str(path), "--trust-pickle"), "layer2.0")


def test_user_model_needs_data_folders(tmp_path):
    torch.save(create("resnext_demo").state_dict(), tmp_path / "sd.pt")
    assert_bad(run("build", "--model", str(tmp_path / "sd.pt"), "--arch", "resnext_demo"), "--calib", "--val")


def test_internal_errors_are_not_tracebacks(tmp_path, monkeypatch):
    import resnext_deploy.pipeline.build as build_mod

    def boom(*a, **k):
        raise RuntimeError("simulated backend crash")

    monkeypatch.setattr(build_mod, "run_stages", boom)
    res = run("build", "--out", str(tmp_path / "o"))
    assert res.exit_code == 4
    assert "internal error" in res.output and "simulated backend crash" in res.output
    assert not (tmp_path / "o").exists()
