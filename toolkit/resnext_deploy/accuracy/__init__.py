"""Accuracy studies: the study command (calibration methods, weight ranges) and peer quantizers (NNCF); the build's
fallback and per-layer sensitivity are pipeline/fallback.py and pipeline/sensitivity.py."""
