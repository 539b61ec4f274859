"""Accuracy tools: per-layer sensitivity, the accuracy fallback, the study command and peer quantizers (NNCF)."""
