"""Issue 28, parts 2 and 4: every decoded size is bounded before it is allocated; only regular files are opened.

Each bomb runs in a fresh subprocess whose peak RSS (getrusage of the child) must stay under 1 GB; before the change
the PNG cost 5.1 GB, the .pt 6.2 GB and the .keras 2.5 GB."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnext_deploy.errors import BadInputError
from resnext_deploy.preprocess import Preprocessing, preprocess_file

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
GB = 1 << 30


def zip_bomb(path: Path, name: str, size: int, others: dict = None) -> None:
    """A real zip whose member ``name`` inflates to ``size`` zero bytes (deflate of a repeated flushed block)."""
    chunk = bytes(1 << 24)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block, tail = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH), co.flush()

    class Repeat:  # the compressor's output for each identical chunk, computed once
        def compress(self, data):
            return block

        def flush(self):
            return tail

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, b in (others or {}).items():
            zf.writestr(n, b)
        with zf.open(name, "w", force_zip64=True) as w:
            w._compressor = Repeat()
            for _ in range(size // len(chunk)):
                w.write(chunk)


#: runs the code under test, then reports the peak RSS of this very process (atexit: also after an error or exit).
#: VmHWM, not getrusage: Linux carries ru_maxrss across fork + exec, so a child of a 1.7 GB pytest "peaked" at 1.7 GB;
#: VmHWM belongs to the address space the child's exec made.
_MEASURED = """
import atexit, re, sys
def _peak():
    sys.stderr.write("\\nPEAK_RSS_KIB=%s\\n" % re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
atexit.register(_peak)
code, sys.argv = sys.argv[1], [sys.argv[0]] + sys.argv[2:]
exec(compile(code, "<measured>", "exec"), {"__name__": "__main__"})
"""


def peak_rss(code: str, *args: str) -> tuple:
    """Run ``code`` in a fresh interpreter; (its stdout+stderr, its own peak RSS in bytes). The child measures itself:
    RUSAGE_CHILDREN would be the largest of every child the test session has waited for."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, code, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(TOOLKIT)})
    m = re.search(r"PEAK_RSS_KIB=(\d+)", proc.stderr)
    assert m, proc.stderr
    return proc.stdout + proc.stderr, int(m.group(1)) * 1024  # ru_maxrss is in KiB on Linux


STRIP = """
import sys, numpy as np
from PIL import Image
from resnext_deploy.preprocess import Preprocessing, preprocess_file
Image.new("RGB", (1, 1_000_000), (200, 10, 10)).save(sys.argv[1])
x = preprocess_file(sys.argv[1], Preprocessing(resize=32, crop=32))
print(x.shape, float(x.mean()))
"""


def test_a_one_by_a_million_png_is_cropped_before_it_is_resized(tmp_path):
    out, rss = peak_rss(STRIP, str(tmp_path / "strip.png"))
    assert "(3, 32, 32)" in out, out
    assert rss < GB  # before: 5.1 GB (resized whole to 32 x 32,000,000)


def test_normal_images_are_resized_whole_exactly_as_before(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    spec = Preprocessing(resize=256, crop=224)
    whole = img.resize((341, 256), Image.BILINEAR).crop(((341 - 224) // 2, 16, (341 - 224) // 2 + 224, 240))
    expect = ((np.asarray(whole, np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32))
    np.testing.assert_array_equal(preprocess_file(tmp_path / "a.png", spec), expect.transpose(2, 0, 1))


LOAD = """
import sys
from resnext_deploy.errors import BadInputError
from resnext_deploy.pipeline.commands import check_file
try:
    check_file(sys.argv[1], "resnext50_32x4d", 10)
except BadInputError as exc:
    print("refused:", exc)
"""


def test_pt_whose_pickle_inflates_to_3_gib_is_refused_unread(tmp_path):
    path = tmp_path / "bomb.pt"
    zip_bomb(path, "bomb/data.pkl", 3 * GB, {"bomb/version": b"3\n", "bomb/byteorder": b"little"})
    assert path.stat().st_size < 4 << 20
    out, rss = peak_rss(LOAD, str(path))
    assert "refused:" in out and "data.pkl" in out and "parsed whole" in out, out  # before: exit 0
    assert rss < GB  # before: 6.2 GB


def test_keras_whose_config_inflates_to_1_gib_is_refused_unread(tmp_path):
    path = tmp_path / "bomb.keras"
    zip_bomb(path, "config.json", GB, {"metadata.json": b"{}"})
    out, rss = peak_rss("import sys\nfrom resnext_deploy.models.keras import _config_of\nfrom pathlib import Path\n"
                        "from resnext_deploy.errors import BadInputError\n"
                        "try:\n    _config_of(Path(sys.argv[1]))\nexcept BadInputError as exc:\n    print('refused:', exc)\n",
                        str(path))
    assert "refused:" in out and "config.json" in out, out
    assert rss < GB  # before: 2.5 GB


def test_hdf5_dataset_past_the_ratio_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    from resnext_deploy.models.archive_bounds import check_archive

    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as fh:  # 512 MiB of zeros, gzip in 64 MiB chunks: a few KB on disk
        fh.create_dataset("w", shape=(1 << 27,), dtype="f4", chunks=(1 << 24,), compression="gzip", fillvalue=0.0)
        fh["w"][:1 << 24] = 0.0
    assert path.stat().st_size < 4 << 20
    with pytest.raises(BadInputError, match="decompression bomb"):
        check_archive(path)


def test_a_fifo_is_refused_at_once_not_opened(tmp_path):
    from resnext_deploy.data.datasets import skip_reason

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    result = {}

    def run():
        try:
            preprocess_file(fifo, Preprocessing(resize=32, crop=32))
        except BadInputError as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)  # before: blocked forever in open()
    assert not t.is_alive() and "not a regular file" in result["error"]
    assert skip_reason(fifo) == "not a regular file"


def test_empty_arrays_and_images_are_bad_input():
    from resnext_deploy.runtime.inputs import iter_images

    spec = Preprocessing(resize=32, crop=32)
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8), np.zeros((4, 0), np.uint8)):
        with pytest.raises(BadInputError, match="empty"):  # before: ZeroDivisionError
            list(iter_images(bad, spec))
    with pytest.raises(BadInputError, match="empty"):
        list(iter_images(Image.new("RGB", (0, 5)), spec))


def test_the_peak_rss_measure_sees_a_child_that_allocates():
    """The bound above means something: 300 MB touched in the child are measured as such, wherever the suite runs."""
    _, rss = peak_rss("import numpy as np; a = np.ones(300 * 2**20, np.uint8); print(int(a.sum()))")
    assert 300 * 2**20 < rss < 1 << 30
