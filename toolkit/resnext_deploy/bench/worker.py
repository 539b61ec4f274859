"""One benchmark configuration in its own process: ``python -m resnext_deploy.bench.worker``.

The parent sends one JSON command per line on stdin and reads one JSON reply per line. Replies go to a
duplicate of the original stdout; stdout itself is pointed at stderr so whatever a library prints (NNCF's
progress bars, OpenVINO's warnings) cannot corrupt the protocol.

A process per configuration keeps each one's memory (peak RSS), threads and allocator state its own; the
parent asks each in turn for a slice of timed runs, so machine drift hits every configuration alike.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..errors import BadInputError


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (VmHWM). Not getrusage: Linux keeps ru_maxrss across
    fork and exec, so a child would report its parent's peak whenever that is higher than its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux, bytes on macOS


def make_runner(spec: Dict[str, Any]) -> Any:
    """The Runner for a configuration: PyTorch eager, or one of our backends with the given settings."""
    kind = spec["kind"]
    if kind == "pytorch":
        from ..models.loading import load_torch_model
        from ..models.runner import TorchRunner

        loaded = load_torch_model(spec["path"], spec.get("arch"), spec.get("num_classes"),
                                  allow_pickle=bool(spec.get("allow_pickle", False)))
        return TorchRunner(loaded.module, threads=int(spec.get("settings", {}).get("threads", 0)))
    from .. import backends

    return backends.get(kind).load(spec["path"], spec.get("settings") or {})


def prepare(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Make a peer's model (NNCF INT8, ORT default INT8) in this process: its time and memory are its own."""
    from . import peers

    calibration = np.load(spec["calibration"])
    t = time.perf_counter()
    info = peers.PREPARERS[spec["peer"]](spec["source"], spec["out"], calibration)
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(), **info}


class Session:
    """The loaded configuration and the images it runs on."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.inputs = np.load(spec["inputs"], mmap_mode="r")
        self.one = np.ascontiguousarray(self.inputs[:1])
        b = int(spec.get("batch", 8))
        self.big = np.ascontiguousarray(np.resize(np.asarray(self.inputs[:b]), (b,) + self.inputs.shape[1:]))
        t = time.perf_counter()
        self.runner = make_runner(spec)
        self.load_s = time.perf_counter() - t
        t = time.perf_counter()
        self.runner.infer(self.one)
        self.first_ms = (time.perf_counter() - t) * 1e3

    def warmup(self, n: int) -> Dict[str, Any]:
        for _ in range(n):
            self.runner.infer(self.one)
        self.runner.infer(self.big)
        return {}

    def latency(self, n: int) -> Dict[str, Any]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.runner.infer(self.one)
            times.append((time.perf_counter() - t) * 1e3)
        return {"ms": times}

    def throughput(self, n: int) -> Dict[str, Any]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.runner.infer(self.big)
            times.append(time.perf_counter() - t)
        return {"batch": len(self.big), "seconds": times}

    def predict(self, out: str, batch: int = 8) -> Dict[str, Any]:
        logits = [self.runner.infer(np.ascontiguousarray(self.inputs[i : i + batch])) for i in range(0, len(self.inputs), batch)]
        np.save(out, np.concatenate(logits).astype(np.float32))
        return {"images": int(len(self.inputs))}

    def profile(self, runs: int) -> Dict[str, Any]:
        """Per-layer counters of this configuration at batch 1 (a separately compiled copy; see profile.py)."""
        from .profile import make_profiler

        try:  # a profiler that fails must not take the configuration's timings with it
            if not hasattr(self, "_profiler"):
                self._profiler = make_profiler(self.spec["kind"], self.spec["path"], self.spec.get("settings") or {}, self.one)
            return {"profile": self._profiler(runs) if self._profiler else {}}
        except Exception as exc:
            return {"profile": {"error": f"{type(exc).__name__}: {exc}"}}

    def end_to_end(self, files: List[str], mode: str, preprocessing: Dict[str, Any], batch: int, out: str) -> Dict[str, Any]:
        """Image files to labels with this configuration's model (bench/typical.py): mode "runtime" (our runtime's
        path), "draft" (the same with the draft shortcut), "before" (our path before issue 22), "typical"
        (PIL + torchvision transforms) or "decode" (the decode floor: preprocessing alone, no model, no logits).
        Logits go to ``out`` (.npy)."""
        from ..preprocess import Preprocessing
        from .typical import before_end_to_end, typical_end_to_end

        spec = Preprocessing.from_dict(preprocessing)
        if mode == "decode":  # the decode floor: no model, so no logits
            from ..runtime.endtoend import measure_decode_floor

            return {"result": measure_decode_floor(files, spec, batch)}
        if mode in ("runtime", "draft"):
            from ..runtime.endtoend import measure_end_to_end

            if mode == "draft":
                spec = Preprocessing.from_dict({**preprocessing, "shortcut": "draft"})
            res = measure_end_to_end(self.runner, files, spec, batch, keep_logits=True)
        elif mode == "before":
            res = before_end_to_end(self.runner.infer, files, spec, batch)
        elif mode == "typical":
            res = typical_end_to_end(self.runner.infer, files, spec)
        else:
            raise ValueError(f"unknown end-to-end mode {mode!r}")
        np.save(out, np.asarray(res.pop("logits"), dtype=np.float32))
        return {"result": res}

    def finish(self) -> Dict[str, Any]:
        details = dict(getattr(self.runner, "details", {}) or {})
        self.runner.close()
        return {"peak_rss_mb": peak_rss_mb(), "details": details, "threads": thread_settings(details)}


def thread_settings(details: Dict[str, Any]) -> Dict[str, Any]:
    """The threads each runtime really uses (its own report where it gives one)."""
    out: Dict[str, Any] = {}
    for key in ("threads", "streams"):
        if key in details:
            out[key] = details[key]
    if out.get("threads") == 0 and "providers" in details:  # ONNX Runtime reports the setting, 0 = its default
        out["threads"] = f"ONNX Runtime default: one per physical core ({_physical_cores()})"
    for env in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(env):
            out[env] = os.environ[env]
    return out


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


def main() -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed from here on goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    replies = os.fdopen(reply_fd, "w", buffering=1)
    session: Optional[Session] = None

    def send(obj: Dict[str, Any]) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "prepare":
                send({"ok": True, **prepare(cmd["spec"])})
                return
            if op == "load":
                session = Session(cmd["spec"])
                send({"ok": True, "load_s": session.load_s, "first_inference_ms": session.first_ms})
                continue
            assert session is not None, "load first"
            handlers: Dict[str, Callable[..., Dict[str, Any]]] = {
                "warmup": session.warmup, "latency": session.latency, "throughput": session.throughput,
                "predict": session.predict, "profile": session.profile, "finish": session.finish,
                "end_to_end": session.end_to_end,
            }
            send({"ok": True, **handlers[op](**cmd)})
            if op == "finish":
                return
        except Exception as exc:  # reported to the parent, which records the configuration as failed
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                  "bad_input": str(exc) if isinstance(exc, BadInputError) else None})
            return


if __name__ == "__main__":
    main()
