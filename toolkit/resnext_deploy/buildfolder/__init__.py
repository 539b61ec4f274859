"""A build folder and what is written into it: artifacts (atomic writes, locks, "is this ours"), manifest.json, sidecars."""
