"""Ray: sharded evaluation and sensitivity give one process's numbers; a worker killed mid-shard is survived.

A local multi-node cluster (ray.cluster_utils.Cluster: a head without CPUs and two nodes of one CPU), so the
workers really are separate processes on separate raylets. Marked `ray`; skipped where Ray is not installed.
"""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING, DEMO_VAL  # noqa: E402
from resnext_deploy.data.datasets import load_calibration, load_labeled  # noqa: E402
from resnext_deploy.recipes import load_recipe  # noqa: E402
from resnext_deploy.scale import LocalInference, ModelFiles, ScaleOptions, open_inference  # noqa: E402
from resnext_deploy.scale import actors  # noqa: E402

pytestmark = pytest.mark.ray

ACCURACY = ("artifact", "images", "top1", "top5", "agreement", "max_abs_logit_diff", "mean_cosine", "min_cosine")


@pytest.fixture(scope="module")
def cluster(start_ray_cluster):
    with start_ray_cluster([None, None]) as c:
        yield c


def _accuracy(results):
    return [[r[k] for k in ACCURACY] for r in results]


def test_two_workers_give_the_numbers_of_one_worker_and_of_one_process(cluster, demo_build):
    from resnext_deploy.pipeline.commands import evaluate_files

    d = demo_build.out_dir
    recipe = load_recipe(target="x86-cpu")
    args = (d / "onnx" / "model-fp32.onnx", [d / "onnxruntime" / "model-int8.ort.onnx", d / "openvino" / "model-int8.xml"], None, recipe)
    local = evaluate_files(*args)
    one = evaluate_files(*args, scale=ScaleOptions(workers=1, shard_images=64))
    two = evaluate_files(*args, scale=ScaleOptions(workers=2, shard_images=64))
    assert _accuracy(two["results"]) == _accuracy(one["results"]) == _accuracy(local["results"])
    assert two["measured"]["accuracy"].startswith("Ray") and "2 workers" in two["measured"]["accuracy"]
    for r in two["results"]:  # latency always from the driver process, and the report says so
        assert r["details"]["measured"]["latency"]["where"] == "driver process"
        assert r["details"]["measured"]["latency"]["pid"] == os.getpid()


def test_logits_are_bit_identical_in_the_same_order(cluster, demo_build):
    art = next(a for a in demo_build.artifacts if a.name == "openvino-int8")
    model = ModelFiles.of(art.name, "openvino", art.abspath(demo_build.out_dir), {"threads": 1})
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING)
    local = LocalInference().logits(model, val.data, 8)
    for workers_decode in (True, False):  # paths to workers that see the files / decoded shards by object ref
        with open_inference(ScaleOptions(workers=2, shard_images=40)) as inference:
            assert inference.cluster.shared_files  # a local cluster: every node sees the driver's files
            inference.cluster.shared_files = workers_decode
            sharded = inference.logits(model, val.data, 8)
        assert sharded.dtype == local.dtype and sharded.shape == local.shape
        assert np.array_equal(sharded, local)  # bit for bit, same order


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    torch = pytest.importorskip("torch")  # noqa: F841
    from resnext_deploy.models.demo.digits import DEMO_CHECKPOINT
    from resnext_deploy.models.demo.hostile import make_quantization_hostile
    from resnext_deploy.models.loading import load_torch_model
    from resnext_deploy.pipeline.export import onnx_from_torch

    module = copy.deepcopy(load_torch_model(DEMO_CHECKPOINT).module.eval())
    make_quantization_hostile(module)
    path = tmp_path_factory.mktemp("hostile") / "hostile.onnx"
    onnx_from_torch(module, path, np.asarray(load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 8, 0).data), 17, 1e-3, True)
    return path


def test_sensitivity_ranking_and_candidate_checks_by_layer_and_by_image(cluster, hostile):
    from resnext_deploy.pipeline.fallback import quick_check
    from resnext_deploy.pipeline.sensitivity import VariantQuantizer, analyze_sensitivity, run_onnx_model

    cal = np.asarray(load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 64, 0).data)
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 120)
    images = np.asarray(val.data[:60])
    reference = run_onnx_model(hostile, val.data, {})
    gates = {"max_top1_drop": 1.0, "min_agreement": 0.98}

    def study(inference):
        q = VariantQuantizer(hostile, cal)
        try:
            sens = analyze_sensitivity(hostile, cal, images, ["uint8"], quantizer=q, reference=reference[:60], inference=inference)
            check = quick_check(q, ["uint8"], sens.ranking()[:2], val.data, val.labels, reference, gates, {}, inference=inference)
        finally:
            q.close()
        return sens, check

    here, check_here = study(None)
    with open_inference(ScaleOptions(workers=1)) as inference:
        one, check_one = study(inference)
    with open_inference(ScaleOptions(workers=2, shard_images=32)) as inference:
        two, check_two = study(inference)
    assert two.ranking() == one.ranking() == here.ranking()
    assert two.layers == one.layers == here.layers  # every error of every layer, bit for bit
    assert two.ranking()[:4] == sorted(two.ranking()[:4])  # the four hostile layers lead, as in one process
    assert check_two == check_one == check_here


def test_a_worker_killed_mid_shard_is_survived(cluster, demo_build, monkeypatch):
    """SIGKILL one worker while it holds shards: Ray restarts it and retries them; the logits do not change."""
    art = next(a for a in demo_build.artifacts if a.name == "onnxruntime-int8")
    model = ModelFiles.of(art.name, "onnxruntime", art.abspath(demo_build.out_dir))
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING)
    clean = LocalInference().logits(model, val.data, 8)

    groups = []
    real_init = actors.ActorGroup.__init__

    def recording(self, *a, **k):
        real_init(self, *a, **k)
        groups.append(self)

    monkeypatch.setattr(actors.ActorGroup, "__init__", recording)
    killed = []

    def kill_once(done, total):
        if not killed and done < total:
            pid = groups[-1].states[0]["pid"]  # that worker still has shards queued: one running, one waiting
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with open_inference(ScaleOptions(workers=2, shard_images=16)) as inference:
        got = inference.logits(model, val.data, 8, kill_once)
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it really died
    assert np.array_equal(got, clean)


def test_build_on_two_workers_reports_what_one_worker_does(cluster, fast_recipe, tmp_path):
    from resnext_deploy.pipeline.build import build

    one = build(recipe_path=fast_recipe, out=tmp_path / "one", sensitivity=True, scale=ScaleOptions(workers=1))
    two = build(recipe_path=fast_recipe, out=tmp_path / "two", sensitivity=True, scale=ScaleOptions(workers=2, shard_images=32))
    assert _accuracy(two.report["results"]) == _accuracy(one.report["results"])
    assert [r["node"] for r in two.report["sensitivity"]["layers"]] == [r["node"] for r in one.report["sensitivity"]["layers"]]
    assert two.report["measured"]["accuracy"].startswith("Ray")
    assert "Where the numbers come from" in (tmp_path / "two" / "report.md").read_text()
