"""The trained stand-in (calibration/standin): images reproducible from their seed, checkpoint as described."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnext_deploy.models.demo import standin
from resnext_deploy.data import datasets
from resnext_deploy.models.demo.standin import (
    STANDIN_CALIB, STANDIN_CHECKPOINT, STANDIN_DIR, STANDIN_LABELS, STANDIN_PREPROCESSING, STANDIN_VAL,
)


def _pngs(folder: Path):
    return sorted(p for p in folder.rglob("*.png"))


@pytest.mark.parametrize("folder,count", [(STANDIN_CALIB, 256), (STANDIN_VAL, 500)])
def test_shipped_images_are_the_rendered_ones(folder, count):
    assert datasets.list_classes(folder) == STANDIN_LABELS
    files = _pngs(folder)
    assert len(files) == count
    per_class = {c: 0 for c in STANDIN_LABELS}
    for p in files:
        per_class[p.parent.name] += 1
    assert set(per_class.values()) <= {count // 10, count // 10 + 1}
    for p in files[:: max(1, count // 25)]:
        index = int(p.stem)
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
            shipped = np.asarray(im)
        drawn = np.asarray(standin.render_standin(STANDIN_LABELS.index(p.parent.name), index, 0))
        assert np.array_equal(shipped, drawn), p


def test_images_differ_by_index_and_seed_and_training_is_disjoint():
    a = np.asarray(standin.render_standin(3, 7, 0))
    assert np.array_equal(a, np.asarray(standin.render_standin(3, 7, 0)))
    assert not np.array_equal(a, np.asarray(standin.render_standin(3, 8, 0)))
    assert not np.array_equal(a, np.asarray(standin.render_standin(3, 7, 1)))
    b = standin.training_batch(0, 0, batch=8)
    assert b["x"].shape == (8, 3, 48, 48) and b["x"].dtype == np.float32 and b["y"].dtype == np.int64
    assert np.array_equal(b["x"], standin.training_batch(0, 0, batch=8)["x"])
    shipped = {int(p.stem) for p in _pngs(STANDIN_DIR)}
    assert min(shipped) >= 0 and max(shipped) < 1_000_000  # training indices start at 1,000,000


def test_a_bad_label_is_named():
    from resnext_deploy.errors import BadInputError

    with pytest.raises(BadInputError, match="0..9, got 10"):
        standin.render_standin(10, 0)


def test_checkpoint_is_a_trained_resnext50_with_the_recorded_accuracy():
    torch = pytest.importorskip("torch")
    from resnext_deploy.pipeline.source import resolve_model

    info = json.loads((STANDIN_DIR / "standin.json").read_text())
    ckpt = torch.load(STANDIN_CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == info["arch"] == "resnext50_32x4d" and ckpt["labels"] == STANDIN_LABELS
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert STANDIN_CHECKPOINT.stat().st_size < 100e6
    src = resolve_model(STANDIN_CHECKPOINT)
    assert src.arch == "resnext50_32x4d" and src.preprocessing == STANDIN_PREPROCESSING
    val = datasets.load_labeled(STANDIN_VAL, src.preprocessing)
    with torch.inference_mode():
        logits = torch.cat([src.module.eval()(torch.from_numpy(val.data[i : i + 100])) for i in range(0, 500, 100)]).numpy()
    top1 = float(np.mean(logits.argmax(1) == val.labels))
    # float16 storage rounds the weights: the float32 model built from them scores what training measured, within 1 image
    assert abs(top1 - info["val_top1"]) <= 0.002 + 1e-9, (top1, info["val_top1"])
    assert 0.6 <= top1 <= 0.95  # a real, imperfect classifier: neither untrained nor the easy digits
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert 0.3 < float(np.mean(probs.max(1) > 0.9)) < 0.95  # real confidence, not saturated


def test_standin_command_trains_and_writes_its_folder(tmp_path):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from resnext_deploy.cli import cli

    res = CliRunner().invoke(cli, ["-q", "demo", "standin", "--out", str(tmp_path), "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert "validation top-1" in res.output
    assert len(_pngs(tmp_path / "calib")) == 256 and len(_pngs(tmp_path / "val")) == 500
    info = json.loads((tmp_path / "standin.json").read_text())
    assert info["steps"] == 1 and (tmp_path / info["checkpoint"]).is_file()
    first = _pngs(tmp_path / "val")[0]
    assert first.read_bytes() == (STANDIN_VAL / first.parent.name / first.name).read_bytes()
