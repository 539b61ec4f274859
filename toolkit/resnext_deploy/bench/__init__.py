"""`resnext-deploy bench`: our build's artifacts timed beside PyTorch eager, ONNX Runtime, OpenVINO and NNCF,
each configuration in its own process, interleaved, in one run (run.py); offline weights and images for
the full-size architectures (arch.py, weights.py, images.py)."""

from .run import BenchOptions, BenchRequest, BenchResult, run_bench

__all__ = ["BenchOptions", "BenchRequest", "BenchResult", "run_bench"]
