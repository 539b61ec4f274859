"""Judging a runner: metrics and latency (evaluate) and the gate that turns them into pass/fail checks."""
