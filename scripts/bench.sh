#!/usr/bin/env bash
# Installs the benchmark extras and runs every benchmark on loopback: streaming
# throughput and latency (raw SSE vs plain LangServe vs this service), overload at 2x
# capacity, and WebSocket fan-out. Tables go to stdout; the plot to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pip install -q -e ".[bench]"
.venv/bin/python -m bench.stream_bench "$@"
.venv/bin/python -m bench.overload_bench
.venv/bin/python -m bench.fanout_bench
