"""The images INT8 gets wrong: order, cap, thumbnails, and on the hostile demo the files report.json lists."""

from __future__ import annotations

import numpy as np
import pytest

from resnext_deploy.evaluation.evaluate import softmax_margin
from resnext_deploy.report.gallery import compare_images, disagreements, thumbnail_png

#: evaluation.gallery in conftest.py's hostile recipe
GALLERY_CAP = 10


def test_disagreements_most_confident_flips_first_up_to_the_cap():
    ref = np.array([[5, 0, 0], [1, 0, 0], [9, 0, 0], [0, 3, 0], [0, 0, 4]], np.float32)
    art = np.array([[0, 6, 0], [0, 1, 0], [0, 0, 2], [0, 3, 0], [0, 0, 4]], np.float32)
    d = disagreements(ref, art, cap=2)
    assert d["count"] == 3 and d["cap"] == 2
    assert [i["index"] for i in d["images"]] == [2, 0]  # float margins: image 2 > image 0 > image 1
    first = d["images"][0]
    assert first["reference"] == {"class": 0, "margin": pytest.approx(float(softmax_margin(ref[2:3])[0]))}
    assert first["artifact"]["class"] == 2
    assert disagreements(ref, ref, cap=24) == {"count": 0, "cap": 24, "images": []}


def test_per_class_top1_of_reference_and_artifact():
    ref = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    art = np.eye(3, dtype=np.float32)[[0, 0, 2, 1]]
    out = compare_images(ref, art, np.array([0, 1, 2, 2]), cap=5)
    assert out["per_class_top1"] == {"images": [1, 1, 2], "reference": [1.0, 1.0, 1.0], "artifact": [1.0, 0.0, 0.5]}
    assert out["disagreements"]["count"] == 2
    assert "per_class_top1" not in compare_images(ref, art, None, cap=5)


def test_thumbnail_is_the_crop_denormalised():
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    chw = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32)
    img = Image.open(io.BytesIO(base64.b64decode(thumbnail_png(chw, mean, std))))
    assert img.size == (30, 20) and np.abs(np.asarray(img.convert("RGB"), int) - rgb).max() <= 1
    big = np.zeros((3, 224, 224), np.float32)
    assert max(Image.open(io.BytesIO(base64.b64decode(thumbnail_png(big, mean, std)))).size) == 96


def test_hostile_build_gallery_lists_the_disagreeing_files(hostile_report):
    """Fallback off: the gallery is non-empty, capped by the recipe, and every listed file really gets another
    class from the INT8 artifact than from the float reference (recomputed here from the files)."""
    from resnext_deploy import backends
    from resnext_deploy.buildfolder.manifest import read_manifest
    from resnext_deploy.preprocess import Preprocessing, preprocess_paths

    res, out, report = hostile_report
    assert res.exit_code == 3, res.output  # the gate fails: INT8 gets most images wrong
    rows = {r["artifact"]: r for r in report["results"]}
    manifest = read_manifest(out)
    spec = Preprocessing.from_dict(manifest["preprocessing"])
    paths = {a["name"]: out / a["path"] for a in manifest["artifacts"]}
    settings = manifest["recipe"]["backends"]["onnxruntime"]
    thumbs = report["gallery"]["thumbnails"]
    for name in ("onnxruntime-int8", "openvino-int8"):
        d = rows[name]["disagreements"]
        assert d["cap"] == GALLERY_CAP and d["count"] > GALLERY_CAP and len(d["images"]) == GALLERY_CAP
        assert d["count"] == round((1 - rows[name]["agreement"]) * rows[name]["images"])
        margins = [i["reference"]["margin"] for i in d["images"]]
        assert margins == sorted(margins, reverse=True)
        assert all(i["path"] in thumbs for i in d["images"])
    listed = [i["path"] for i in rows["onnxruntime-int8"]["disagreements"]["images"]]
    x = preprocess_paths(listed, spec)
    with backends.get("onnxruntime").load(paths["onnx-fp32"], settings) as ref, \
            backends.get("onnxruntime").load(paths["onnxruntime-int8"], settings) as q:
        ref_top, q_top = ref.infer(x).argmax(1), q.infer(x).argmax(1)
    assert (ref_top != q_top).all()
    assert [i["reference"]["class"] for i in rows["onnxruntime-int8"]["disagreements"]["images"]] == ref_top.tolist()
    assert [i["artifact"]["class"] for i in rows["onnxruntime-int8"]["disagreements"]["images"]] == q_top.tolist()
    page = (out / "report.html").read_text()
    for p in listed:
        assert f'data-path="{p}"' in page


def test_recipe_gallery_cap_defaults_to_24_and_refuses_negative(tmp_path):
    from resnext_deploy.errors import BadInputError
    from resnext_deploy.recipes import load_recipe

    assert load_recipe(None, "x86-cpu").section("evaluation")["gallery"] == 24
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "x86-cpu"\n[evaluation]\ngallery = -1\n')
    with pytest.raises(BadInputError, match="evaluation.gallery = -1"):
        load_recipe(bad)
