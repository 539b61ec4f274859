"""What CI systems read: JUnit XML (junit.py), a Markdown job summary (summary.py), the comparison with a
previous build (baseline.py), and the one call the CLI makes to write them (outputs.py).

Standard library only: `compile --bundle` writes them on the device too.
"""
