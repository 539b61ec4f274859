"""Per-layer sensitivity on a model made INT8-hostile: the transformation, the variants, the ranking, the search."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from resnext_deploy.data.datasets import load_calibration, load_labeled
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING, DEMO_VAL
from resnext_deploy.errors import BadInputError
from resnext_deploy.pipeline.fallback import quick_check, search_exclusions
from resnext_deploy.pipeline.quantize import qdq_from_onnx
from resnext_deploy.data.sampling import evenly_spaced
from resnext_deploy.pipeline.sensitivity import (
    VariantQuantizer, analyze_sensitivity, attach_plot, markdown_section, quantizable_layers, run_onnx_model,
)

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

HOSTILE = [
    "/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/conv2/Conv",
    "/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/conv2/Conv",
]
GATES = {"max_top1_drop": 1.0, "min_agreement": 0.98}


@pytest.fixture(scope="module")
def data():
    cal = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 64, 0).data
    val = load_labeled(DEMO_VAL, DEMO_PREPROCESSING, 200)
    return cal, val


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo module, its hostile twin (default transformation) and the twin's FP32 ONNX."""
    from resnext_deploy.models.export.torch_onnx import onnx_from_torch
    from resnext_deploy.models.demo.hostile import make_quantization_hostile
    from resnext_deploy.models.loading import load_torch_model
    from resnext_deploy.models.demo.digits import DEMO_CHECKPOINT

    plain = load_torch_model(DEMO_CHECKPOINT).module.eval()
    hostile = copy.deepcopy(plain)
    records = make_quantization_hostile(hostile)
    path = tmp_path_factory.mktemp("hostile") / "hostile.onnx"
    sample = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 8, 0).data
    onnx_from_torch(hostile, path, sample, 17, 1e-3, True)
    return plain, hostile, records, path


@pytest.fixture(scope="module")
def quantizer(models, data):
    q = VariantQuantizer(models[3], data[0])
    yield q
    q.close()


@pytest.fixture(scope="module")
def ranked(models, data, quantizer):
    """The hostile model's sensitivity (int8 activations, 100 validation images)."""
    images = data[1].data[evenly_spaced(len(data[1].data), 100)]
    return analyze_sensitivity(models[3], data[0], images, ["int8"], quantizer=quantizer)


def test_hostile_transformation_keeps_the_float_function(models, data):
    plain, hostile, records, path = models
    x = torch.from_numpy(np.asarray(data[1].data))
    with torch.no_grad():
        a, b = plain(x).numpy(), hostile(x).numpy()
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert (a.argmax(1) == b.argmax(1)).all()
    # ...while the tensor between conv1 and conv2 really is inflated 256x in channel 0
    assert float(hostile.layer1[0].bn1.weight[0].detach() / plain.layer1[0].bn1.weight[0].detach()) == pytest.approx(256.0)
    assert [n for r in records for n in r["onnx_nodes"]] == HOSTILE
    assert set(HOSTILE) <= {name for name, _ in quantizable_layers(path)}


def test_hostile_transformation_rejects_what_it_cannot_do(models):
    from resnext_deploy.models.demo.hostile import make_quantization_hostile

    module = copy.deepcopy(models[0])
    with pytest.raises(BadInputError, match="no block 'layer9.0'"):
        make_quantization_hostile(module, ["layer9.0"])
    with pytest.raises(BadInputError, match="positive"):
        make_quantization_hostile(module, ["layer1.0"], factor=-4.0)
    with pytest.raises(BadInputError, match="not a bottleneck"):
        make_quantization_hostile(module, ["layer1"])


@pytest.mark.parametrize("flavour,kind", [("int8", "exclude"), ("uint8", "only")])
def test_variants_from_one_calibration_are_what_ort_writes_afresh(models, data, quantizer, tmp_path, flavour, kind):
    """A variant read from the shared calibration cache is byte-identical to a fresh quantize_static run."""
    node = HOSTILE[0]
    fresh = tmp_path / "fresh.onnx"
    if kind == "exclude":
        qdq_from_onnx(models[3], fresh, data[0], flavour, exclude_nodes=[node])
        cached = quantizer.quantize(flavour, exclude=[node], out=tmp_path / "cached.onnx")
    else:
        qdq_from_onnx(models[3], fresh, data[0], flavour, quantize_nodes=[node])
        cached = quantizer.quantize(flavour, only=[node], out=tmp_path / "cached.onnx")
    assert fresh.read_bytes() == cached.read_bytes()


def _producers(path):
    graph = onnx.load(str(path)).graph
    return {o: n.op_type for n in graph.node for o in n.output}, {n.name: n for n in graph.node}


def test_excluded_layers_carry_no_qdq(quantizer, tmp_path):
    path = quantizer.quantize("int8", exclude=HOSTILE, out=tmp_path / "x.onnx")
    producer, nodes = _producers(path)
    for name in HOSTILE:
        assert producer.get(nodes[name].input[1]) is None, f"{name}: weights should be a float initializer"
    for name in (HOSTILE[1], HOSTILE[3]):  # the inflated tensors (conv1 -> ReLU -> conv2) stay in float
        assert producer.get(nodes[name].input[0]) != "DequantizeLinear"
    assert producer[nodes["/layer3/layer3.0/conv2/Conv"].input[1]] == "DequantizeLinear"


def test_sensitivity_ranks_the_hostile_layers_first_and_is_deterministic(models, data, quantizer, ranked):
    images = data[1].data[evenly_spaced(len(data[1].data), 100)]
    runs = [ranked, analyze_sensitivity(models[3], data[0], images, ["int8"], quantizer=quantizer)]
    first = runs[0]
    assert first.baseline["int8"]["nsr"] > 0.5 and first.baseline["int8"]["agreement"] < 0.5  # plain INT8 is broken
    assert set(first.ranking()[:4]) == set(HOSTILE)
    top4 = min(row["score"] for row in first.layers[:4])
    assert top4 > 100 * first.layers[4]["score"]  # and by a wide margin
    assert first.ranking() == runs[1].ranking()
    assert [r["score"] for r in first.layers] == [r["score"] for r in runs[1].layers]
    assert first.variants == 1 + len(first.layers) and first.seconds["total"] > 0


def test_leave_one_out_is_measured_too(models, data, quantizer):
    images = data[1].data[:16]
    res = analyze_sensitivity(models[3], data[0], images, ["int8"], measure="both", quantizer=quantizer)
    row = res.layers[0]
    assert set(row) >= {"quantize_one", "float_one", "score", "rank"}
    assert res.variants == 1 + 2 * len(res.layers)
    with pytest.raises(BadInputError, match="measure 'bogus'"):
        analyze_sensitivity(models[3], data[0], images, ["int8"], measure="bogus", quantizer=quantizer)


def _record(excluded, top1, agreement, passed):
    return {"excluded": excluded, "quick_passed": passed,
            "quick": {t: {"top1": top1[t], "agreement": agreement[t]} for t in ("onnxruntime-int8", "openvino-int8")}}


def test_search_is_greedy_in_rank_order_and_stops_at_the_first_pass():
    ranking = HOSTILE + ["/conv1/Conv", "/fc/Gemm"]
    same = {"onnxruntime-int8": 0.5, "openvino-int8": 0.5}
    measure = lambda ex: _record(ex, same, same, set(HOSTILE) <= set(ex))  # noqa: E731
    found = search_exclusions(ranking, 5, measure, _record([], same, same, False))
    assert found["passed"] and found["excluded"] == HOSTILE and len(found["attempts"]) == 4
    assert [a["added"] for a in found["attempts"]] == HOSTILE and all(a["kept"] for a in found["attempts"])
    capped = search_exclusions(ranking, 3, measure, _record([], same, same, False))
    assert not capped["passed"] and capped["excluded"] == [] and [len(a["excluded"]) for a in capped["attempts"]] == [1, 2, 3]


def test_search_never_keeps_a_layer_that_makes_a_gated_backend_worse():
    """A candidate that costs one backend top-1 (even while it helps the other) is dropped, and the search
    goes on from the list kept before it: kept attempts never get worse, and each says what it bought."""
    ranking = ["a", "worse", "b", "c"]
    gain = {"a": 0.1, "worse": 0.3, "b": 0.1, "c": 0.1}

    def measure(ex):
        ort = 0.5 + sum(gain[x] for x in ex)
        ov = 0.6 + sum(gain[x] for x in ex if x != "worse") - (0.15 if "worse" in ex else 0.0)
        return _record(ex, {"onnxruntime-int8": ort, "openvino-int8": ov}, {"onnxruntime-int8": ort, "openvino-int8": ov},
                       ort >= 0.79 and ov >= 0.89)

    base = measure([])
    confirmed = []
    found = search_exclusions(ranking, 3, measure, base, confirm=lambda ex, rec: confirmed.append(list(ex)) or True)
    assert found["passed"] and found["excluded"] == ["a", "b", "c"]
    assert [a["added"] for a in found["attempts"]] == ranking and [a["kept"] for a in found["attempts"]] == [True, False, False, True]
    # a layer not kept is proposed again beside the next ones (paired layers help only together), oldest dropped at the cap
    assert [a["excluded"] for a in found["attempts"]] == [["a"], ["a", "worse"], ["a", "worse", "b"], ["a", "b", "c"]]
    assert found["attempts"][1]["bought"]["openvino-int8"]["top1_pp"] == pytest.approx(-15.0)
    assert found["attempts"][3]["bought"]["onnxruntime-int8"]["top1_pp"] == pytest.approx(20.0)
    assert confirmed == [["a", "b", "c"]]  # only a kept candidate that passes the quick check is built
    kept = [base] + [a for a in found["attempts"] if a["kept"]]
    for before, after in zip(kept, kept[1:]):
        assert all(after["quick"][t]["top1"] >= before["quick"][t]["top1"] for t in after["quick"])
    # the candidates are bounded: at most CANDIDATES_PER_LAYER per layer the cap allows
    stuck = search_exclusions(["worse"] * 10, 2, measure, base)
    assert not stuck["passed"] and len(stuck["attempts"]) == 4


def test_quick_check_search_recovers_with_exactly_the_hostile_layers(models, data, quantizer, ranked):
    val = data[1]
    reference = run_onnx_model(models[3], val.data)
    ranking = ranked.ranking()

    def attempt(excluded):
        return quick_check(quantizer, ["int8", "uint8"], excluded, val.data, val.labels, reference, GATES)

    plain = attempt([])
    assert not plain["quick_passed"] and plain["quick"]["int8"]["top1_drop_pct"] > 20
    found = [search_exclusions(ranking, 5, attempt, plain) for _ in range(2)]
    assert found[0]["passed"] and set(found[0]["excluded"]) == set(HOSTILE)
    assert found[0]["excluded"] == found[1]["excluded"]
    # one block repaired does not help while the other still breaks the model: only all four together are kept
    assert [a["kept"] for a in found[0]["attempts"]][-1] and [len(a["excluded"]) for a in found[0]["attempts"]] == [1, 2, 3, 4]
    kept = [plain] + [a for a in found[0]["attempts"] if a["kept"]]
    for before, after in zip(kept, kept[1:]):
        assert all(after["quick"][fl]["agreement"] >= before["quick"][fl]["agreement"] for fl in ("int8", "uint8"))
    final = found[0]["attempts"][-1]["quick"]
    assert all(final[fl]["agreement"] >= 0.98 for fl in ("int8", "uint8"))


def test_plot_and_markdown(ranked, tmp_path):
    res = ranked.to_dict()
    attach_plot(res, tmp_path, highlight=HOSTILE)
    png = tmp_path / res["plot"]["path"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = "\n".join(markdown_section(res))
    assert "![layer sensitivity](sensitivity.png)" in md
    assert all(f"`{n}`" in md for n in HOSTILE)
    assert md.count("\n| ") >= 11  # header + 10 rows


def test_recipe_fallback_keys_are_validated(tmp_path):
    from resnext_deploy.recipes import load_recipe

    bad = tmp_path / "bad.toml"
    bad.write_text('[backends.onnxruntime]\nprecisions = ["int8"]\n[fallback]\nmeasure = "bogus"\n')
    with pytest.raises(BadInputError, match="bogus"):
        load_recipe(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('[backends.onnxruntime]\nprecisions = ["int8"]\n[fallback]\nmax_excluded = 3\n')
    with pytest.raises(BadInputError, match="fallback.max_excluded"):
        load_recipe(typo)
