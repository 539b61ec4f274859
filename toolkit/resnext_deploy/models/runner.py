"""PyTorch eager as a Runner: the float model a user starts from, evaluated beside the artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

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


def save_checkpoint(checkpoint: Dict[str, Any], out_path: Path, info_name: str, **info_extra: Any) -> Dict[str, Any]:
    """Write a trained model's checkpoint and its JSON description beside it (each via a temp file and a rename).

    The description is the checkpoint without its state_dict, plus the file's name and sha256 and ``info_extra``;
    it is returned.
    """
    torch = require("torch", "save the checkpoint")
    from ..buildfolder.artifacts import sha256_file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out_path)
    info = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    info.update({"checkpoint": out_path.name, "sha256": sha256_file(out_path), **info_extra})
    info_path = out_path.parent / info_name
    tmp_info = info_path.with_suffix(".json.tmp")
    tmp_info.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_info, info_path)
    return info
