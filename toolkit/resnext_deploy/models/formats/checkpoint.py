"""A PyTorch checkpoint written by ``torch.save``: a state_dict, a checkpoint dict, or (with the opt-in) a whole module."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .base import Sniff
from .torch_module import TorchModuleFormat

#: the first byte of a pickle of protocol 2+ (torch.save's legacy, non-zip files)
PICKLE_PROTO = 0x80


class CheckpointFormat(TorchModuleFormat):
    name = "torch"
    suffixes = (".pt", ".pth", ".ckpt", ".bin")
    help = ("a PyTorch checkpoint (torch.save of a state_dict or a checkpoint dict; a pickled module needs "
            "--trust-pickle)")

    def detect(self, sniff: Sniff) -> bool:
        """A torch.save zip (``<archive>/data.pkl``, no TorchScript code) or a legacy pickle."""
        if sniff.zip_names is not None:
            return sniff.has_entry("data.pkl")
        return sniff.head[:1] == bytes([PICKLE_PROTO])

    def scan(self, path: Path, allow_pickle: bool) -> None:
        """The archive bounds, then torch's static scan of the pickle (nothing unpickled): a global the safe loader
        refuses needs the opt-in."""
        from ..trust import first_unsafe_global, needs_unpickling, refuse_code_execution

        super().scan(path, allow_pickle)
        if allow_pickle or not path.is_file():
            return
        first = first_unsafe_global(path)
        if first is not None:
            refuse_code_execution(path, needs_unpickling(first), False)

    def read(self, path: Path, arch: Optional[str], num_classes: Optional[int], allow_pickle: bool) -> Any:
        from ..loading import from_object
        from ..trust import torch_load, unreadable

        if Sniff.of(path).is_broken_zip:  # torch.save writes a zip: one without its directory was cut short
            raise unreadable(path, "zip archive without a central directory", truncated=True)
        return from_object(torch_load(path, allow_pickle), path, arch, num_classes)
