"""The TensorRT / Jetson half: backend, engine plans, Q/DQ rules, calibration cache, bundles, the workstation stage and the on-device compile.

Everything here except ``stage`` runs on the device (Python 3.8, numpy, TensorRT)."""
