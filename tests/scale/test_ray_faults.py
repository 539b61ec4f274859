"""A node without a backend's package: the run stops with an error naming the worker and the package.

The node's raylet (and so every worker on it) gets a PYTHONPATH whose first entry holds an `openvino`
package that raises ImportError when imported: a real import failure on that node only, as on a node where
OpenVINO was never installed. Marked `ray`; skipped where Ray is not installed.
"""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")

from resnext_deploy.errors import EXIT_MISSING_DEPENDENCY, MissingDependencyError  # noqa: E402
from resnext_deploy.scale import ModelFiles, ScaleOptions, open_inference  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster_without_openvino(tmp_path_factory, start_ray_cluster):
    shadow = tmp_path_factory.mktemp("no-openvino")
    (shadow / "openvino").mkdir()
    (shadow / "openvino" / "__init__.py").write_text("raise ImportError(\"No module named 'openvino'\")\n")
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    with start_ray_cluster([{"PYTHONPATH": path}]) as c:
        yield c


def test_a_worker_missing_the_backend_package_is_named(cluster_without_openvino, demo_build):
    import numpy as np

    art = next(a for a in demo_build.artifacts if a.name == "openvino-int8")
    model = ModelFiles.of(art.name, "openvino", art.abspath(demo_build.out_dir))
    images = np.zeros((8, 3, 32, 32), np.float32)
    node_ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
    with open_inference(ScaleOptions(workers=1)) as inference:
        with pytest.raises(MissingDependencyError) as err:
            inference.logits(model, images, 8)
    text = str(err.value)
    assert "Ray worker" in text and node_ip in text and "'openvino'" in text and "pip install openvino" in text
    assert err.value.exit_code == EXIT_MISSING_DEPENDENCY
    # ONNX Runtime is there on that node: its artifacts still run
    ort = next(a for a in demo_build.artifacts if a.name == "onnxruntime-int8")
    with open_inference(ScaleOptions(workers=1)) as inference:
        assert inference.logits(ModelFiles.of(ort.name, "onnxruntime", ort.abspath(demo_build.out_dir)), images, 8).shape[0] == 8
