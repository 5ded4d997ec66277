#!/usr/bin/env bash
# Installs the benchmark extras and runs every benchmark on loopback: streaming
# throughput and latency (raw SSE vs plain LangServe vs this service), overload at 2x
# capacity, WebSocket fan-out, CPU fairness between tenants, and the cost of the local
# analysis per message, one process against uvicorn workers and replicas, and the cost of tracing.
# Tables go to stdout; the plot to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test  # the scaling bench runs redis-server and PostgreSQL
.venv/bin/python -m pip install -q -e ".[bench]"
.venv/bin/python -m bench.stream_bench "$@"
.venv/bin/python -m bench.overload_bench
.venv/bin/python -m bench.fanout_bench
.venv/bin/python -m bench.cpu_fairness_bench
.venv/bin/python -m bench.analysis_bench
.venv/bin/python -m bench.retrieval_bench
.venv/bin/python -m bench.history_bench
.venv/bin/python -m bench.scaling_bench
# Again with each serving process held to 0.4 of a core, where this user may make cgroups
# (bench/cpu_quota.py): what N processes do when each has a core of its own, beside a raw
# server that shares nothing, held to 0.2 so it streams about as many streams/s as ours.
if [ -w /sys/fs/cgroup/cpu ] || [ -w /sys/fs/cgroup/cgroup.subtree_control ]; then
    .venv/bin/python -m bench.scaling_bench --cpus-per-process 0.4 --rounds 5 --streams 900 \
        --baseline raw-model-coalesced --baseline-cpus-per-process 0.2
fi
PYTHONPATH=. .venv/bin/python bench/tracing_bench.py
