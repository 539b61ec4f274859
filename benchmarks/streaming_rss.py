"""Peak RSS of `resnext-deploy evaluate` on 1,000 vs 10,000 images: the folder streams, memory stays flat.

    python benchmarks/streaming_rss.py --work /tmp/rss --out benchmarks/results/scale

Generates (seeded, offline) ImageFolder trees of natural-image crops in ``--work`` (not committed), builds the
demo once, then runs `evaluate` on the demo's FP32 reference and ONNX Runtime INT8 artifact for each folder
in a child process of its own, which reports its own peak RSS (VmHWM of /proc/self/status at exit: unlike
ru_maxrss, it does not include the parent's memory at fork). It also states what one decoded array of the
folder weighs, i.e. what an all-in-memory loader holds. ``--label`` names the run (e.g. to measure another
checkout's code: PYTHONPATH=/other/toolkit python benchmarks/streaming_rss.py --label main).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))


def image_folder(root: Path, count: int, classes: int = 10, seed: int = 0, size: int = 40) -> Path:
    """``count`` seeded crops spread over ``classes`` subfolders (ImageFolder layout)."""
    from resnext_deploy.bench.images import natural_crops

    folder = root / f"val-{count}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return folder
    for c in range(classes):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    done = 0
    while done < count:  # in chunks: the generator itself must not hold 10k images either
        chunk = natural_crops(min(500, count - done), seed + done, size)
        for img in chunk:
            img.save(folder / str(done % classes) / f"img{done:06d}.jpg", quality=90)
            done += 1
    return folder


#: runs the CLI and writes its own VmHWM (kB) to $RSS_OUT at exit
WRAPPER = """
import atexit, os, runpy, sys
def _report():
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]
    open(os.environ['RSS_OUT'], 'w').write(hwm)
atexit.register(_report)
sys.argv = ['resnext-deploy'] + sys.argv[1:]
runpy.run_module('resnext_deploy', run_name='__main__')
"""


def peak_rss_mb(args: list, report: Path) -> tuple:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WRAPPER] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, RSS_OUT=str(report)))
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stderr.decode()}")
    return int(report.read_text()) / 1024.0, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/resnext-deploy-rss"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from resnext_deploy.host.cpu import host_cpu
    from resnext_deploy.models.demo.digits import DEMO_PREPROCESSING

    out_dir = args.work / "demo-build"
    if not (out_dir / "manifest.json").is_file():  # in a child: this process stays small (no torch)
        subprocess.run([sys.executable, "-m", "resnext_deploy", "-q", "build", "--out", str(out_dir)], check=True,
                       stdout=subprocess.DEVNULL)
    rows = []
    for n in args.counts:
        folder = image_folder(args.work, n)
        cmd = ["-q", "evaluate", str(out_dir / "onnxruntime" / "model-int8.ort.onnx"),
               "--reference", str(out_dir / "onnx" / "model-fp32.onnx"), "--val", str(folder),
               "--out", str(args.work / f"eval-{n}.json")]
        rss, seconds = peak_rss_mb(cmd, args.work / "rss.txt")
        eager = n * int(np.prod(DEMO_PREPROCESSING.input_shape)) * 4 / 2**20
        rows.append({"images": n, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                     "one_decoded_array_mb": round(eager, 1)})
        print(rows[-1], flush=True)
    doc = {"code": args.label, "what": "peak RSS of `resnext-deploy evaluate` (FP32 reference + ONNX Runtime INT8, demo model, "
                   f"{DEMO_PREPROCESSING.crop}x{DEMO_PREPROCESSING.crop} input) by image count",
           "machine": {"cpu": host_cpu().model, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average": os.getloadavg()},
           "rows": rows,
           "growth_mb_per_1k_images": round((rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"])
                                            / max(1, (rows[-1]["images"] - rows[0]["images"]) / 1000), 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "streaming_rss.json" if args.label == "this checkout" else f"streaming_rss-{args.label}.json"
    (args.out / name).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
