#!/usr/bin/env bash
# The checks that need a GPU, as one script: valleys on CUDA against CPU float64, NCCL, and the
# GPU benchmark. Run from the repository root on a machine with one or more CUDA GPUs:
#
#   OUT=/tmp/valleys-gpu bash benchmarks/device_check.sh            # all checks
#   STEPS="nccl" OUT=/tmp/valleys-gpu bash benchmarks/device_check.sh  # some of tests nccl bench gpt
#
# Python packages valleys needs that the machine lacks can come as wheels in .whl/ (installed
# with --no-deps into /tmp/site); the package itself is used from src/ without installing.
# Each step has its own time limit and the script goes on after a failure; the exit status is
# the number of failed steps.
set -u
OUT=${OUT:-/tmp/valleys-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 VALLEYS_CACHE_DIR=/tmp/vcache
failed=0
want() { [[ " ${STEPS:-tests nccl bench gpt} " == *" $1 "* ]]; }
step() {  # step NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.txt, count failures
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None)"

# 1. Every public path on CUDA, against a CPU float64 reference (fails, not skips, without CUDA).
want tests && step test_device 240 env VALLEYS_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_device.py

# 2. NCCL: the sharded objective under torchrun (one process per GPU) against one process.
if want nccl; then
    gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    args=(curvature --problem digits-mlp -k 2 --probes 4 --lanczos-steps 30 --trace-matvecs 40
          --dtype float64 --json)
    step curvature_one 120 "$PY" -m valleys "${args[@]}" --device cuda --out "$OUT/one"
    step curvature_nccl 180 "$PY" -m torch.distributed.run --nproc_per_node "$gpus" -m valleys \
        "${args[@]}" --distributed --out "$OUT/nccl"
    "$PY" - "$OUT" <<'EOF' || failed=$((failed + 1))
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
one = json.loads((out / "one" / "curvature.json").read_text())
nccl = json.loads((out / "nccl" / "curvature.json").read_text())
for key in ("loss", "sharpness"):
    rel = abs(nccl[key] - one[key]) / abs(one[key])
    print(f"NCCL vs one process, {key}: {nccl[key]!r} vs {one[key]!r}, relative {rel:.1e}")
    assert rel < 1e-8, key
print("processes", nccl["processes"], "backend", nccl.get("backend"))
EOF
    # More processes than GPUs must be refused with a clear message (exit 2 and one line).
    echo "== nccl_too_many (expected: refused)"
    timeout 120 "$PY" -m torch.distributed.run --nproc_per_node $((gpus + 1)) -m valleys \
        "${args[@]}" --distributed --out "$OUT/too_many" >"$OUT/nccl_too_many.txt" 2>&1
    if grep -q "one process per GPU" "$OUT/nccl_too_many.txt"; then
        grep -h "one process per GPU" "$OUT/nccl_too_many.txt" | head -n 1
    else
        tail -n 15 "$OUT/nccl_too_many.txt"
        failed=$((failed + 1))
fi
fi

# 3. Timings on the GPU against PyHessian and curvlinops on the same device.
want bench && step bench_gpu 200 "$PY" benchmarks/bench_gpu.py --device cuda --out "$OUT"

# 4. Sharpness of a GPT at GPT-2 small's size (TinyGPT, 124 M parameters, 8 x 256 tokens) on the
#    GPU: valleys against PyHessian (time, torch.cuda.max_memory_allocated, HVPs, error against a
#    tol=1e-4 reference), and valleys.memory_estimate's prediction against the measured peak.
want gpt && step bench_gpt_memory 480 "$PY" benchmarks/bench_gpt_memory.py --size large \
    --device cuda --repeats 1 --out "$OUT"
echo "failed steps: $failed"
exit "$failed"
