"""Skipped images: the same list for the same folder from every loader, named (first five) with the reason."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING
from resnext_deploy.data.datasets import describe_skipped, load_calibration, load_labeled
from resnext_deploy.report import render_markdown


@pytest.fixture()
def mixed(tmp_path):
    """40 demo calibration PNGs, a truncated JPEG, a .txt and a text file named .png."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for p in sorted(DEMO_CALIB.rglob("*.png"))[:40]:
        shutil.copy(p, folder / p.name)
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.txt").write_text("calibration images for ...")
    (folder / "fake.png").write_text("not a png")
    return folder


EXPECTED = [("cut.jpg", "truncated"), ("fake.png", "not an image"), ("notes.txt", "not an image")]


def test_every_loader_reports_the_same_skipped_files(mixed, tmp_path):
    for count in (None, 8, 3, 1000):
        got = load_calibration(mixed, DEMO_PREPROCESSING, count, 0)
        assert [(p.name, why) for p, why in got.skipped] == EXPECTED, count
        assert len(got.paths) == (min(count, 40) if count else 40)  # exactly `count`: sampled from usable files
    val = tmp_path / "val"
    shutil.copytree(mixed, val / "0")
    for limit in (None, 5):
        got = load_labeled(val, DEMO_PREPROCESSING, limit)
        assert [(p.name, why) for p, why in got.skipped] == EXPECTED, limit
        assert len(got.paths) == (limit or 40)


def test_first_five_are_named_and_the_rest_counted(tmp_path):
    skipped = [(tmp_path / f"{i}.txt", "not an image") for i in range(8)]
    text = describe_skipped(skipped, tmp_path)
    assert text.startswith("8 files skipped: 0.txt (not an image), 1.txt")
    assert "4.txt" in text and "5.txt" not in text and text.endswith("and 3 more")


def test_export_names_the_skipped_files_and_quantize_lists_them_in_the_sidecar(mixed, tmp_path, caplog):
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "export", "--calib", str(mixed), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "3 files skipped: cut.jpg (truncated), fake.png (not an image), notes.txt (not an image)" in caplog.text
    caplog.clear()
    res = runner.invoke(cli, ["-q", "quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib", str(mixed),
                              "--out", str(tmp_path / "q.onnx")])
    assert res.exit_code == 0, res.output
    assert "3 files skipped: cut.jpg (truncated)" in caplog.text
    side = json.loads((tmp_path / "q.onnx.json").read_text())["calibration"]
    assert side["skipped"] == 3
    assert [(r["path"].rsplit("/", 1)[-1], r["reason"]) for r in side["skipped_files"]] == EXPECTED


def test_report_markdown_names_skipped_files():
    d = {"validation_images": 10, "validation": "v", "validation_skipped": 7,
         "validation_skipped_files": [{"path": f"/v/0/{i}.jpg", "reason": "truncated"} for i in range(7)]}
    report = {"model": {"name": "m"}, "dataset": d, "target": "x86-cpu", "reference": "onnx-fp32", "results": [],
              "gate": {"passed": True, "checks": []}}
    md = render_markdown(report)
    assert "(7 files skipped: `0.jpg` (truncated)" in md and "`4.jpg`" in md and "`5.jpg`" not in md
    assert "and 2 more, listed in report.json" in md


def _huge_png(path, side=20000):
    """A valid side x side 1-bit grayscale PNG (a few tens of kB on disk, 400 M pixels), written row by row."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp, parts = zlib.compressobj(9), []
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + the packed bits of one row
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def test_a_20000_pixel_square_png_is_skipped_as_too_large_with_memory_bounded(tmp_path, monkeypatch):
    import subprocess
    import sys

    from resnext_deploy.data.datasets import max_image_pixels, skip_reason

    big = _huge_png(tmp_path / "huge.png")
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(big) as img:
            assert img.size == (20000, 20000) and img.mode == "1"  # a real PNG, just large
    assert skip_reason(big) == "too large"
    # just over the limit: Pillow only warns there (it refuses at twice the limit), the probe skips it all the same
    side = int(max_image_pixels() ** 0.5) + 1
    assert skip_reason(_huge_png(tmp_path / "over.png", side)) == "too large"
    assert skip_reason(_huge_png(tmp_path / "under.png", 2000)) is None
    # memory: the probe reads the header only (decoding 400 M pixels would take 400 MB); measured in a fresh process
    code = (
        "import resource, sys\n"
        "from resnext_deploy.data.datasets import skip_reason\n"
        "from pathlib import Path\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "why = skip_reason(Path(sys.argv[1]))\n"
        "print(why, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] + " " + out[1] == "too large" and int(out[2]) < 50_000  # kB of peak RSS added by the probe


def test_a_too_large_image_is_named_in_the_skipped_list_of_both_loaders(tmp_path):
    val = tmp_path / "val" / "3"
    val.mkdir(parents=True)
    for p in sorted((DEMO_CALIB.parent / "val" / "3").glob("*.png"))[:3]:
        shutil.copy(p, val / p.name)
    _huge_png(val / "huge.png")
    got = load_labeled(tmp_path / "val", DEMO_PREPROCESSING)
    assert [(p.name, why) for p, why in got.skipped] == [("huge.png", "too large")] and len(got.paths) == 3
    assert "huge.png (too large)" in describe_skipped(got.skipped)
    assert [(p.name, why) for p, why in load_calibration(val, DEMO_PREPROCESSING).skipped] == [("huge.png", "too large")]
