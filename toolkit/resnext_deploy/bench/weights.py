"""Realistic weights without a download: a seeded initialisation with BatchNorm statistics re-estimated
on natural images, so the activation ranges INT8 calibrates against look like a trained network's.

A freshly initialised network's BatchNorm layers hold mean 0 / variance 1, which match nothing the
convolutions actually produce: activations grow or vanish layer by layer and INT8 ranges are meaningless.
Re-estimating the statistics (train-mode forward passes with a cumulative average, momentum=None) makes
every BatchNorm normalise what really reaches it, as after training. Trained ResNets also keep each
residual branch small against the identity path (the last BatchNorm's scale well below 1; the reason
zero-init-residual training works); at scale 1 a random network is chaotic, a rounding error grows block
by block and INT8 agrees with float on a fifth of the images, which says nothing about a real model. So
the last BatchNorm of each residual branch starts at ``residual_scale``. A random classifier head then sees
features that are all positive with a large common mean, so it predicts one class for nearly every
image; standardising the head (features centred on their mean over the images, logits scaled to a set
spread) spreads the top-1 over many classes, so top-1 agreement between INT8 and float
measures something.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..optional import require

log = logging.getLogger(__name__)


def recalibrate_batchnorm(module: Any, images: np.ndarray, batch_size: int = 32) -> Any:
    """Re-estimate every BatchNorm's running mean/var on ``images`` (NCHW float32); returns ``module`` in eval."""
    torch = require("torch", "re-estimate BatchNorm statistics")
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    module.train()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        module.eval()
    log.info("re-estimated %d BatchNorm layers on %d images", len(bns), len(images))
    return module


def standardize_head(module: Any, images: np.ndarray, logit_std: float = 3.0, batch_size: int = 32) -> Any:
    """Centre and scale the final Linear layer on the features ``images`` produce; returns ``module``."""
    torch = require("torch", "standardise the classifier head")
    fc = module.fc
    feats = []
    hook = fc.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].detach().clone()))
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
    finally:
        hook.remove()
    f = torch.cat(feats)
    mu = f.mean(0)
    with torch.no_grad():
        # One scale for all features, not one per feature: dividing by each feature's spread would
        # amplify the near-constant features, and with them any rounding error, by orders of magnitude.
        w = fc.weight * (logit_std / float(((f - mu) @ fc.weight.T).std()))
        fc.weight.copy_(w)
        fc.bias.copy_(-(w @ mu))
    return module


def seeded_model(arch: str, images: np.ndarray, seed: int = 0, num_classes: Optional[int] = None,
                 head_images: int = 128, residual_scale: float = 0.2) -> Any:
    """``arch`` initialised from ``seed`` (torch's default init, each residual branch's last BatchNorm
    scaled by ``residual_scale``), BatchNorm re-estimated on ``images``, the classifier head standardised
    on the first ``head_images`` of them."""
    torch = require("torch", "create the model")
    from ..models.resnext import create

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = create(arch, num_classes)
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():
        for block in model.modules():
            if hasattr(block, "bn3") and hasattr(block, "conv3"):  # a bottleneck's residual branch
                block.bn3.weight.fill_(residual_scale)
    recalibrate_batchnorm(model, images)
    return standardize_head(model, images[:head_images])
