"""PyTorch eager as a Runner: the float model a user starts from, evaluated beside the artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.base import Runner
from ..optional import require


class TorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, module: Any, threads: int = 0) -> None:
        super().__init__()
        self._torch = require("torch", "run the PyTorch model")
        if threads > 0:
            self._torch.set_num_threads(threads)
        self._module = module.eval()
        self.details = {"threads": self._torch.get_num_threads(), "torch_version": self._torch.__version__}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._module(self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


def eval_top1(module: Any, x: np.ndarray, y: np.ndarray, batch: int = 100) -> float:
    """Top-1 accuracy of a PyTorch module in eval mode on preprocessed images (training scripts' validation)."""
    torch = require("torch", "evaluate the PyTorch model")
    module.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            logits = module(torch.from_numpy(np.ascontiguousarray(x[s : s + batch])))
            correct += int((logits.argmax(1).numpy() == y[s : s + batch]).sum())
    return correct / max(1, len(x))
