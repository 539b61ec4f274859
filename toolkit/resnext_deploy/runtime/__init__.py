"""The on-device runtime: load a build directory (or Jetson bundle) and classify images, without PyTorch.

    from resnext_deploy import runtime
    clf = runtime.load("build/resnext_demo/x86-cpu")      # best artifact this machine can run
    for p in clf.predict(["a.png", "b.jpg"], top_k=3):
        print(p.source, p.label, p.probability)

Needs only numpy, Pillow and one backend package (openvino, onnxruntime, or TensorRT from JetPack);
runs on Python 3.8+.
"""

from .classifier import Classifier, Prediction, load, runner_settings, softmax
from .selection import BACKEND_ORDER, PRECISION_ORDER, Candidate, candidates, choose

__all__ = [
    "BACKEND_ORDER",
    "PRECISION_ORDER",
    "Candidate",
    "Classifier",
    "Prediction",
    "candidates",
    "choose",
    "load",
    "runner_settings",
    "softmax",
]
