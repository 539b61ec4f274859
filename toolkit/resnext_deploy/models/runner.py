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
