"""The OpenVINO runner: a static-shape compiled model per recipe batch size, the dynamic one for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from resnext_deploy import backends
from resnext_deploy.errors import BadInputError

pytestmark = pytest.mark.skipif(not backends.get("openvino").available(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def images(demo_build):
    from resnext_deploy.data.datasets import load_labeled
    from resnext_deploy.models.demo.digits import DEMO_VAL
    from resnext_deploy.preprocess import Preprocessing

    return load_labeled(DEMO_VAL, Preprocessing.from_dict(demo_build.manifest["preprocessing"]), 20).data


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_static_models_give_the_dynamic_models_logits(demo_build, images, precision):
    path = demo_build.out_dir / "openvino" / f"model-{precision}.xml"
    ov = backends.get("openvino")
    with ov.load(path, {"static_batches": [1, 8]}) as static, ov.load(path, {"static_batches": []}) as dynamic:
        assert static.details["static_batches"] == [1, 8] and dynamic.details["static_batches"] == []
        for n in (1, 8, 3):  # 3 has no static model: the dynamic one, compiled on first use
            a, b = static.infer(images[:n]), dynamic.infer(images[:n])
            assert a.shape == (n, 10)
            np.testing.assert_allclose(a, b, atol=1e-4 if precision == "fp32" else 0.05)
            assert (a.argmax(1) == b.argmax(1)).all()


def test_read_only_input_arrays_are_accepted(demo_build, images):
    frozen = images[:8].copy()
    frozen.setflags(write=False)
    with backends.get("openvino").load(demo_build.out_dir / "openvino" / "model-int8.xml", {"static_batches": [8]}) as r:
        np.testing.assert_array_equal(r.infer(frozen), r.infer(images[:8].copy()))


@pytest.mark.parametrize("bad", [[0], ["x"], [-8, 1]])
def test_bad_static_batches_name_the_value(demo_build, bad):
    with pytest.raises(BadInputError, match="static_batches"):
        backends.get("openvino").load(demo_build.out_dir / "openvino" / "model-int8.xml", {"static_batches": bad})


def test_the_manifest_records_what_the_runtime_compiles(demo_build):
    ov = next(a for a in demo_build.manifest["artifacts"] if a["name"] == "openvino-int8")
    assert ov["settings"]["static_batches"] == [1, 8]
    assert ov["settings"]["compile_config"] == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    assert ov["parent"] == "onnx-int8-uint8"
