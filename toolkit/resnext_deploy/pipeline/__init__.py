"""The workstation pipeline: intake, check, export, datasets, quantize, the build and the by-path stage commands."""
