#!/usr/bin/env bash
# GPU checks, in one call on a CUDA machine (its python3 must have torch; peers are optional):
#   1. the CUDA tests (tests/test_cuda.py, the CUDA-graph test of tests/test_replay.py, the DMFT CUDA test):
#      every piece on CUDA = on the CPU, CUDA graphs = the plain loop;
#   2. the demo on the GPU (`phasetorch demo --device cuda`), its summary kept;
#   3. the per-iteration cost of every preset, CUDA graphs vs plain (scripts/iteration_cost.py --compare-graphs);
#   4. the benchmark rows on the GPU (default 5,1,2,4,6,3, in that order: the batch goal first).
# Usage: [STEPS="1 3 4"] scripts/device_check.sh OUTDIR [ROWS] [BENCH_TIMEOUT_S]
#   STEPS: the steps to run, in the order given (default all: "1 2 3 4 5 6"). With a 15-minute device budget,
#   `STEPS="1 3 4" scripts/device_check.sh OUT 2,4,5 240` (tests, graphs vs plain, the GPU goals) fits.
# Writes OUTDIR/{pytest_cuda.txt, demo_summary.json, iteration_cost_cuda.json, benchmark_cuda.json,
#                benchmark_cuda.md, bench_log.txt}.
# Peers: put solvephase/deepinv (and their pure-Python needs) on PYTHONPATH before calling.
set -u
OUT=${1:?usage: scripts/device_check.sh OUTDIR [ROWS] [BENCH_TIMEOUT_S]}
ROWS=${2:-5,1,2,4,6,3}
BENCH_TIMEOUT=${3:-300}
PY=${PYTHON:-python3}
STEPS=${STEPS:-1 2 3 4 5 6}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'python', sys.version.split()[0])"

step1() {
    echo "== 1. CUDA tests"
    timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py tests/test_replay.py "tests/test_dmft.py::test_cuda_matches_cpu" \
        2>&1 | tee "$OUT/pytest_cuda.txt" | tail -25 || status=1
    grep -qE "[0-9]+ passed" "$OUT/pytest_cuda.txt" && ! grep -qE "failed|error" "$OUT/pytest_cuda.txt" || status=1
}

step2() {
    echo "== 2. demo on the GPU"
    SECONDS=0
    if timeout 120 "$PY" -m phasetorch demo --device cuda --out /tmp/demo_cuda --quiet > /tmp/demo_cuda.txt 2>&1; then
        cp /tmp/demo_cuda/summary.json "$OUT/demo_summary.json"
        echo "demo ok in about $SECONDS s"; tail -8 /tmp/demo_cuda.txt
    else
        echo "demo FAILED"; tail -20 /tmp/demo_cuda.txt; status=1
    fi
}

step3() {
    echo "== 3. per-iteration cost of every preset on the GPU (n=1024, m=8n, float64), CUDA graphs vs plain"
    timeout 240 "$PY" scripts/iteration_cost.py --device cuda --n 1024 --compare-graphs --json "$OUT/iteration_cost_cuda.json" || status=1
}

step4() {
    echo "== 4. benchmark rows $ROWS on the GPU"
    timeout "$BENCH_TIMEOUT" "$PY" scripts/benchmark.py --device cuda --rows "$ROWS" \
        --json "$OUT/benchmark_cuda.json" --markdown "$OUT/benchmark_cuda.md" > "$OUT/bench_log.txt" 2>&1 || status=1
    tail -30 "$OUT/bench_log.txt"
}

step5() {
    echo "== 5. sync-free loop: time vs host-read interval k on the GPU"
    timeout 300 "$PY" scripts/sync_study.py --device cuda --repeats 2 --out "$OUT" || status=1
}

step6() {
    echo "== 6. sharded run with NCCL (needs 2 GPUs; compared with the same run in one process)"
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$NGPU" -ge 2 ]; then
        ARGS="reconstruct phasetorch/data/shepp_logan.png --model gaussian --size 32 --algorithm raf --iters 50 --device cuda --quiet"
        timeout 300 "$PY" -m torch.distributed.run --nproc_per_node 2 -m phasetorch --threads 1 $ARGS --distributed --out /tmp/nccl_dist || status=1
        timeout 300 "$PY" -m phasetorch --threads 1 $ARGS --out /tmp/nccl_single || status=1
        "$PY" -c "import torch; a=torch.load('/tmp/nccl_dist/reconstruction.pt', weights_only=False); b=torch.load('/tmp/nccl_single/reconstruction.pt', weights_only=False); xa=a['x'] if isinstance(a, dict) else a; xb=b['x'] if isinstance(b, dict) else b; d=float((xa-xb).abs().max()/xb.abs().max()); print('NCCL vs one process: max rel. diff', d); raise SystemExit(d > 1e-5)" | tee "$OUT/nccl_check.txt" || status=1
    else
        echo "only $NGPU GPU(s): the NCCL check needs 2 (unmeasured)" | tee "$OUT/nccl_check.txt"
    fi
}

for s in $STEPS; do
    case "$s" in
        [1-6]) "step$s" ;;
        *) echo "unknown step $s"; status=1 ;;
    esac
done
exit $status
