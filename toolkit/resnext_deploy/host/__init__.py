"""The machine the toolkit runs on: CPU facts (one /proc/cpuinfo reader, replaceable in tests) and load (/proc/loadavg). Stdlib only."""
