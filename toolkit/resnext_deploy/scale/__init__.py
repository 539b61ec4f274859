"""Evaluation and sensitivity beyond one process: image shards, resumable results, and Ray behind one switch.

``open_inference(ScaleOptions(...))`` gives the object the pipeline asks for logits: in this process (the
default, as always) or on a Ray cluster (``workers``: a local cluster started for the run; ``address``: an
existing one). Ray is imported only through ``resnext_deploy.optional`` and only when asked for.
"""

from __future__ import annotations

from .inference import LocalInference, ModelFiles, ScaleOptions
from .switch import open_inference

__all__ = ["LocalInference", "ModelFiles", "ScaleOptions", "open_inference"]
