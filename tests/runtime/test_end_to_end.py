"""End to end (issue 22): the file-to-label path is faster without changing a bit of what the model sees.

- the default preprocessing equals, bit for bit, the path as it was before (kept verbatim in bench/typical.py);
- the runtime's logits through the thread pool equal those of the old serial path, batch for batch;
- the draft shortcut is opt-in, approximate, and close;
- the demo build's report carries each artifact's end-to-end numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from resnext_deploy import runtime
from resnext_deploy.bench.images import write_camera_images
from resnext_deploy.bench.typical import before_preprocess_file
from resnext_deploy.errors import BadInputError
from resnext_deploy.preprocess import Preprocessing, StageTimes, preprocess_file, preprocess_image


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Camera-size JPEGs plus the awkward cases: odd sizes, portrait, grayscale, palette PNG with alpha,
    an EXIF-rotated JPEG, an image already at the resize size, one smaller than the crop."""
    root = tmp_path_factory.mktemp("e2e-images")
    cam = write_camera_images(root / "camera", 4, seed=3)
    files = sorted(cam.glob("*.jpg"))
    rng = np.random.default_rng(0)
    def rgb(w, h):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    rgb(1001, 777).save(root / "odd.jpg", quality=85)
    rgb(480, 640).save(root / "portrait.jpg")
    rgb(300, 257).convert("L").save(root / "gray.jpg")
    rgb(333, 250).convert("RGBA").convert("P").save(root / "palette.png")
    rgb(256, 256).save(root / "exact.png")
    rgb(100, 60).save(root / "small.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    rgb(640, 480).save(root / "rotated.jpg", exif=exif)
    return files + [root / n for n in ("odd.jpg", "portrait.jpg", "gray.jpg", "palette.png", "exact.png", "small.png", "rotated.jpg")]


def test_default_preprocessing_is_bit_identical_to_the_path_before(image_files):
    for spec in (Preprocessing(), Preprocessing(resize=36, crop=32, interpolation="bicubic"), Preprocessing(resize=224, crop=224)):
        for path in image_files:
            new, old = preprocess_file(path, spec), before_preprocess_file(path, spec)
            assert new.dtype == np.float32 and new.shape == old.shape == spec.input_shape
            assert np.array_equal(new, old), f"{path.name}: {np.abs(new - old).max()}"
            with Image.open(path) as img:  # a PIL image the caller holds: same array, and the caller's image untouched
                img.load()
                before = img.copy()
                assert np.array_equal(preprocess_image(img, spec), preprocess_image(before, spec))
                assert img.tobytes() == before.tobytes()


def test_stage_times_are_collected_per_stage(image_files):
    times = StageTimes()
    for p in image_files[:3]:
        preprocess_file(p, Preprocessing(), times)
    assert set(times.seconds) == {"decode", "resize", "normalise"}
    assert all(times.counts[k] == 3 for k in times.seconds) and all(v > 0 for v in times.seconds.values())


def test_draft_shortcut_is_opt_in_approximate_and_close(image_files):
    exact, draft = Preprocessing(), Preprocessing(shortcut="draft")
    big = image_files[:4]  # the camera-size JPEGs: decoded at 1/2 or 1/4 scale
    diffs = []
    for p in big:
        a, b = preprocess_file(p, exact), preprocess_file(p, draft)
        cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos > 0.99, f"{p.name}: the draft image is far from the exact one (cosine {cos:.4f})"
        diffs.append(float(np.abs(a - b).max()))
    assert max(diffs) > 0  # it is a shortcut: not the same pixels
    with pytest.raises(BadInputError, match="shortcut 'fast'"):
        Preprocessing(shortcut="fast")
    assert Preprocessing.from_dict(exact.to_dict()).shortcut == "none"


def test_runtime_logits_equal_the_serial_path_before(demo_build, image_files):
    """Thread pool on or off, the logits are bit-identical to feeding the old path's arrays batch by batch."""
    with runtime.load(demo_build.out_dir, backend="onnxruntime", precision="int8", workers=3) as clf:
        spec, runner = clf.preprocessing, clf._runner
        old = np.stack([before_preprocess_file(p, spec) for p in image_files])
        expected = np.concatenate([runner.infer(old[i : i + clf.batch_size]) for i in range(0, len(old), clf.batch_size)])
        times = StageTimes()
        piped = clf.predict([str(p) for p in image_files], top_k=3, times=times)
        assert [p.source for p in piped] == [str(p) for p in image_files]  # input order kept
        assert np.array_equal(np.stack([p.logits for p in piped]), expected)
        assert {"decode", "resize", "normalise", "infer", "wait", "postprocess"} <= set(times.seconds)
        clf.workers = 0
        assert np.array_equal(clf.logits([str(p) for p in image_files]), expected)


def test_pipelined_errors_name_the_file_in_input_order(demo_build, image_files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with runtime.load(demo_build.out_dir, backend="onnxruntime", workers=2) as clf:
        with pytest.raises(BadInputError, match="broken.jpg"):
            clf.predict([str(image_files[0]), str(bad), str(image_files[1])])
        with pytest.raises(BadInputError, match="does not exist"):
            clf.predict([str(image_files[0]), str(tmp_path / "missing.jpg")])
        assert len(clf.predict([str(p) for p in image_files[:2]])) == 2  # still usable after an error


def test_demo_report_has_end_to_end_beside_model_only(demo_build):
    report = json.loads((demo_build.out_dir / "report.json").read_text())
    arts = {a["name"] for a in demo_build.manifest["artifacts"]}
    rows = [r for r in report["results"] if r["artifact"] in arts and r["artifact"] != "pytorch-fp32"]
    assert rows
    images = min(demo_build.report["dataset"]["validation_images"], 64)
    for r in rows:
        e = r["end_to_end"]
        assert 0 < e["p50_ms"] <= e["p99_ms"] and e["images_per_s"] > 0 and e["images"] == images
        assert sum(e["source_sizes"].values()) == images and all("x" in k for k in e["source_sizes"])
        assert {"decode", "resize", "normalise", "infer", "postprocess"} <= set(e["stages_ms"])
        assert ("wait" in e["pipelined_stages_ms"]) == (e["workers"] > 0)
        # batch 1 end to end includes the model's own batch-1 time plus decoding: it cannot be faster than the stages it sums
        assert e["mean_ms"] >= sum(e["stages_ms"].values()) * 0.99
        assert e["preprocess_shortcut"] == "none"
    md = (demo_build.out_dir / "report.md").read_text()
    assert "## End to end (image file to label)" in md and "e2e img/s" in md
