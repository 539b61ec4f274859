"""The shipped offline demo (calibration/digits): data split, rendering, checkpoint, metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnext_deploy.models.demo import digits as demo
from resnext_deploy.data import datasets
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_CHECKPOINT, DEMO_DIR, DEMO_PREPROCESSING, DEMO_VAL

LABELS = [str(i) for i in range(10)]


def _pngs(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def split():
    return json.loads((DEMO_DIR / "split.json").read_text(encoding="utf-8"))


def test_demo_paths_point_at_shipped_folder():
    assert DEMO_DIR.name == "digits"
    assert DEMO_CHECKPOINT == DEMO_DIR / "resnext_demo.pt"
    assert DEMO_CALIB == DEMO_DIR / "calib" and DEMO_VAL == DEMO_DIR / "val"
    for p in (DEMO_CHECKPOINT, DEMO_CALIB, DEMO_VAL, DEMO_DIR / "split.json", DEMO_DIR / "demo.json"):
        assert p.exists(), p


@pytest.mark.parametrize("name,count", [("val", 500), ("calib", 256)])
def test_shipped_split_counts_layout_and_images(name, count):
    folder = DEMO_DIR / name
    assert sorted(d.name for d in folder.iterdir() if d.is_dir()) == LABELS
    assert datasets.list_classes(folder) == LABELS
    files = _pngs(folder)
    assert len(files) == count
    for p in files:
        assert p.suffix == ".png" and len(p.stem) == 4 and p.stem.isdigit()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)


def test_split_json_matches_files_and_is_disjoint(split):
    assert split["seed"] == 0
    val, calib, train = set(split["val"]), set(split["calib"]), set(split["train"])
    assert (len(val), len(calib), len(train)) == (500, 256, 1297)
    assert not val & calib and not val & train
    assert calib <= train
    assert val | train == set(range(1797))
    for name in ("val", "calib"):
        on_disk = {int(p.stem) for p in _pngs(DEMO_DIR / name)}
        assert on_disk == set(split[name])


def test_split_is_stratified(split):
    sk = pytest.importorskip("sklearn.datasets")
    y = sk.load_digits().target
    for name, count in (("val", 500), ("calib", 256)):
        per_class = np.bincount(y[split[name]], minlength=10)
        expected = np.bincount(y, minlength=10) * count / len(y)
        assert np.all(np.abs(per_class - expected) <= 1.5), (name, per_class)
    # Files sit in the folder of their true class.
    for p in _pngs(DEMO_VAL)[::25]:
        assert int(p.parent.name) == y[int(p.stem)]


def test_rerendered_val_image_matches_shipped_png(split):
    sk = pytest.importorskip("sklearn.datasets")
    digits = sk.load_digits()
    for i in split["val"][::50] + split["calib"][::50]:
        folder = DEMO_VAL if i in split["val"] else DEMO_CALIB
        path = folder / str(digits.target[i]) / demo.image_name(i)
        with Image.open(path) as im:
            shipped = np.asarray(im)
        assert np.array_equal(np.asarray(demo.render_digit(digits.images[i])), shipped), path


def test_training_preprocessing_equals_deployment_path(split):
    pytest.importorskip("sklearn")
    i = split["val"][0]
    rendered = demo.render_training_images(indices=[i])["x"][0]
    loaded = datasets.load_labeled(DEMO_VAL, DEMO_PREPROCESSING, limit=None)
    k = [int(p.stem) for p in loaded.paths].index(i)
    assert np.array_equal(rendered, loaded.data[k])


def test_demo_preprocessing_constants():
    spec = DEMO_PREPROCESSING
    assert (spec.resize, spec.crop, spec.input_shape) == (32, 32, (3, 32, 32))
    assert len(set(spec.mean)) == 1 and len(set(spec.std)) == 1
    pytest.importorskip("sklearn")
    stats = demo.compute_demo_mean_std(0)
    assert round(stats["mean"], 4) == spec.mean[0]
    assert round(stats["std"], 4) == spec.std[0]


def test_write_digits_dataset_is_deterministic(tmp_path):
    pytest.importorskip("sklearn")
    result = demo.write_digits_dataset(tmp_path, seed=0)
    assert result["counts"] == {"train": 1297, "val": 500, "calib": 256}
    assert (tmp_path / "split.json").read_bytes() == (DEMO_DIR / "split.json").read_bytes()
    for name in ("val", "calib"):
        shipped = [p.relative_to(DEMO_DIR) for p in _pngs(DEMO_DIR / name)]
        written = [p.relative_to(tmp_path) for p in _pngs(tmp_path / name)]
        assert written == shipped
        for rel in shipped[::7]:
            assert (tmp_path / rel).read_bytes() == (DEMO_DIR / rel).read_bytes(), rel
    # A second run into the same folder changes nothing; another seed replaces the old files.
    before = {p: p.read_bytes() for p in _pngs(tmp_path / "val")[:20]}
    demo.write_digits_dataset(tmp_path, seed=0)
    assert all(p.read_bytes() == b for p, b in before.items())
    demo.write_digits_dataset(tmp_path, seed=1)
    other = json.loads((tmp_path / "split.json").read_text())
    assert other["seed"] == 1 and other["val"] != json.loads((DEMO_DIR / "split.json").read_text())["val"]
    assert {int(p.stem) for p in _pngs(tmp_path / "val")} == set(other["val"])


def test_demo_json_sha256_matches_checkpoint():
    info = demo.demo_model_info()
    assert hashlib.sha256(DEMO_CHECKPOINT.read_bytes()).hexdigest() == info["sha256"]
    assert info["arch"] == "resnext_demo" and info["num_classes"] == 10 and info["labels"] == LABELS
    assert info["preprocessing"] == DEMO_PREPROCESSING.to_dict()
    assert info["val_top1"] >= 0.97


def test_checkpoint_small_and_reaches_accuracy():
    torch = pytest.importorskip("torch")
    from resnext_deploy.models.resnext import create

    assert DEMO_CHECKPOINT.stat().st_size < 2_000_000
    ckpt = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "resnext_demo" and ckpt["num_classes"] == 10 and ckpt["labels"] == LABELS
    assert ckpt["preprocessing"] == DEMO_PREPROCESSING.to_dict()
    model = create(ckpt["arch"], ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    val = datasets.load_labeled(DEMO_VAL, DEMO_PREPROCESSING)
    assert len(val.data) == 500 and not val.skipped
    with torch.no_grad():
        pred = model(torch.from_numpy(np.asarray(val.data))).argmax(1).numpy()
    top1 = float((pred == val.labels).mean())
    assert top1 >= 0.97
    assert abs(top1 - ckpt["val_top1"]) < 1e-6


def test_demo_model_info_without_json(tmp_path):
    from resnext_deploy.errors import BadInputError

    with pytest.raises(BadInputError):
        demo.demo_model_info(tmp_path)


def test_train_demo_smoke(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from resnext_deploy.models.resnext import create

    shipped_sha = demo.demo_model_info()["sha256"]
    demo.write_digits_dataset(tmp_path / "data", seed=0)
    out = tmp_path / "model" / "resnext_demo.pt"
    metrics = demo.train_demo(tmp_path / "data", out, epochs=1, seed=0, limit=64)
    assert metrics["train_images"] == 64 and metrics["val_images"] == 500
    assert 0.0 <= metrics["val_top1"] <= 1.0
    assert out.is_file() and not out.with_suffix(".tmp").exists()
    info = demo.demo_model_info(out.parent)
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and info["epochs"] == 1
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    create("resnext_demo", 10).load_state_dict(ckpt["state_dict"], strict=True)
    # The shipped model is untouched.
    assert demo.demo_model_info()["sha256"] == shipped_sha
