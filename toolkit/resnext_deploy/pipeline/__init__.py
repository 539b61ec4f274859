"""The workstation pipeline: intake, check, export, quantize, the accuracy fallback, the build and the by-path stage commands."""
