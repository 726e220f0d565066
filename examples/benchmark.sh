#!/usr/bin/env bash
# Run every benchmark of issue 5 side by side and write the results table.
#
#   examples/benchmark.sh            # set up, build build/bench, measure (about 15 min on 2 cores)
#   examples/benchmark.sh --quick    # tiny clips (1-2 min), results under build/bench-quick-results
#
# Writes benchmarks/results.json, benchmarks/results.md (every target with its measured
# value, the commands, the machine and the date) and benchmarks/throughput.png. Any
# argument is passed to benchmarks/run_all.py (--repeat K, --workers N, --data DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
exec .venv/bin/python benchmarks/run_all.py "$@"
