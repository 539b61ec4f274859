"""resnext-deploy: ResNeXt from PyTorch to edge devices, with an honest parity report.

Stages are plain functions from artifacts to artifacts (see ``resnext_deploy.pipeline.build`` for the whole
pipeline); importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
