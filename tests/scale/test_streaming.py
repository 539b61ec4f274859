"""Streaming image lists, image shards and the resume store, in one process (no Ray needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING, DEMO_VAL
from resnext_deploy.evaluation.evaluate import predict_all
from resnext_deploy.data import datasets
from resnext_deploy.data.datasets import ImageList, load_calibration, load_labeled
from resnext_deploy.preprocess import preprocess_paths
from resnext_deploy.progress import Rate, format_eta
from resnext_deploy.scale import LocalInference, ModelFiles, ScaleOptions
from resnext_deploy.scale.shards import ShardStore, plan_shards


@pytest.fixture()
def decode_counter(monkeypatch):
    """Counts the images decoded for use (the probe's own check does not count)."""
    seen = []
    real = datasets.preprocess_file

    def counting(path, *args, **kwargs):
        seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "preprocess_file", counting)
    return seen


def test_a_folder_is_decoded_a_batch_at_a_time(decode_counter):
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING)
    assert isinstance(val.data, ImageList) and len(val.data) == len(val.paths) == len(val.labels)
    assert decode_counter == []  # listing and probing the folder keeps no image
    batch = val.data[8:16]
    assert len(decode_counter) == 8 and batch.shape == (8,) + DEMO_PREPROCESSING.input_shape
    # the same pixels as decoding the files eagerly
    assert np.array_equal(batch, preprocess_paths(val.paths[8:16], DEMO_PREPROCESSING))
    assert np.array_equal(val.data[[3, 1]], preprocess_paths([val.paths[3], val.paths[1]], DEMO_PREPROCESSING))
    assert np.array_equal(val.data[5], preprocess_paths([val.paths[5]], DEMO_PREPROCESSING)[0])


def test_calibration_is_a_lazy_seeded_sample():
    cal = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 32, 0)
    again = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 32, 0)
    assert isinstance(cal.data, ImageList) and len(cal.data) == 32 and cal.paths == again.paths
    assert np.asarray(cal.data).shape == (32,) + DEMO_PREPROCESSING.input_shape


def test_digest_follows_the_files_labels_and_preprocessing(tmp_path):
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 40)
    d = val.data.digest(val.labels)
    assert d == load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 40).data.digest(val.labels)
    assert d != val.data.digest(val.labels[::-1].copy())
    assert d != ImageList(val.paths[:-1], DEMO_PREPROCESSING).digest()
    from dataclasses import replace

    assert val.data.digest() != ImageList(val.paths, replace(DEMO_PREPROCESSING, interpolation="bicubic")).digest()


def test_shards_are_whole_batches_covering_every_image():
    plan = plan_shards(1003, 8, 250)
    assert [len(s) for s in plan[:-1]] == [256] * 3 and plan[-1].stop == 1003
    assert all(s.start % 8 == 0 for s in plan)
    assert [s.start for s in plan[1:]] == [s.stop for s in plan[:-1]]


def test_sharded_logits_are_one_process_logits(demo_build):
    art = next(a for a in demo_build.artifacts if a.name == "onnxruntime-int8")
    path = art.abspath(demo_build.out_dir)
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 100)
    from resnext_deploy import backends

    with backends.get("onnxruntime").load(path, {}) as runner:
        whole = predict_all(runner, np.asarray(val.data), 8)
    got = LocalInference(shard_images=24).logits(ModelFiles.of(art.name, "onnxruntime", path), val.data, 8)
    assert got.dtype == np.float32 and np.array_equal(got, whole)


def test_an_interrupted_evaluation_resumes_from_its_shards(demo_build, tmp_path):
    """Interrupt an evaluation after two shards (a real KeyboardInterrupt from its progress callback), then resume."""
    art = next(a for a in demo_build.artifacts if a.name == "openvino-int8")
    model = ModelFiles.of(art.name, "openvino", art.abspath(demo_build.out_dir))
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 120)
    clean = LocalInference(shard_images=32).logits(model, val.data, 8)

    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    first = LocalInference(tmp_path / "resume", shard_images=32)
    with pytest.raises(KeyboardInterrupt):
        first.logits(model, val.data, 8, stop_after_two)
    files = sorted((tmp_path / "resume").rglob("shard-*.npy"))
    assert len(files) == 2 and not list((tmp_path / "resume").rglob(".*tmp*"))  # whole shards only
    second = LocalInference(tmp_path / "resume", shard_images=32)
    got = second.logits(model, val.data, 8)
    assert second.resumed_shards == 2 and np.array_equal(got, clean)
    # another model or another image list never reads those shards
    other = LocalInference(tmp_path / "resume", shard_images=32)
    other.logits(model, ImageList(val.paths[:64], DEMO_PREPROCESSING), 8)
    assert other.resumed_shards == 0


def test_a_damaged_shard_is_recomputed(tmp_path):
    store = ShardStore(tmp_path)
    shard = plan_shards(16, 8, 16)[0]
    key = ShardStore.key("a" * 64, "b" * 64, 8, {})
    store.put(key, shard, np.ones((16, 3), np.float32))
    assert store.get(key, shard).shape == (16, 3)
    next(tmp_path.rglob("shard-*.npy")).write_bytes(b"not numpy")
    assert store.get(key, shard) is None


def test_evaluate_command_resumes(demo_build, tmp_path):
    from click.testing import CliRunner

    from resnext_deploy.cli import cli

    d = demo_build.out_dir
    args = ["evaluate", str(d / "onnxruntime" / "model-int8.ort.onnx"), "--reference", str(d / "onnx" / "model-fp32.onnx"),
            "--resume", str(tmp_path / "r")]
    first = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["measured"]["resumed_shards"] == 0 and b["measured"]["resumed_shards"] >= 2
    keys = ("top1", "top5", "agreement", "max_abs_logit_diff", "mean_cosine", "min_cosine")
    assert [[r[k] for k in keys] for r in a["results"]] == [[r[k] for k in keys] for r in b["results"]]
    lat = b["results"][1]["details"]["measured"]["latency"]
    assert lat["where"] == "driver process" and b["measured"]["accuracy"].startswith("this process")


def test_rate_and_eta():
    t = iter([0.0, 2.0, 4.0])
    rate = Rate(clock=lambda: next(t))
    assert rate.update(10, 110) == (None, None)  # from the first report on (a resumed run starts part way)
    r, left = rate.update(30, 110)
    assert r == pytest.approx(10.0) and left == pytest.approx(8.0)
    assert format_eta(None) == "--:--" and format_eta(75) == "1:15" and format_eta(3725) == "1:02:05"


def test_scale_options_refuse_bad_values():
    from resnext_deploy.errors import BadInputError

    with pytest.raises(BadInputError, match="--workers"):
        ScaleOptions(workers=-1)
    assert not ScaleOptions().distributed and ScaleOptions(workers=2).distributed and ScaleOptions(address="auto").distributed


def test_workers_without_ray_is_exit_5(monkeypatch, demo_build):
    """Without Ray installed, --workers says what to install (exit 5), never a traceback."""
    import sys

    from click.testing import CliRunner

    from resnext_deploy.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a package that is not there: ImportError
    d = demo_build.out_dir
    res = CliRunner().invoke(cli, ["evaluate", str(d / "onnx" / "model-fp32.onnx"), "--reference",
                                   str(d / "onnx" / "model-fp32.onnx"), "--workers", "2"])
    assert res.exit_code == 5 and "resnext-deploy[scale]" in res.output, res.output
