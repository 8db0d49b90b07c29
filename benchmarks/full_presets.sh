#!/usr/bin/env bash
# Every reproduction's full preset, one process per (reproduction, seed), JOBS at a time, one
# torch thread each: the way to regenerate docs/results/ on a many-core machine.
#
#   JOBS=14 DEADLINE=540 WORK=/tmp/full bash benchmarks/full_presets.sh [NAME ...]
#
# Each seed runs into WORK/NAME/seed-S/ (its own folder, so processes never share a file);
# jobs still running at DEADLINE seconds are stopped and simply not there. Then, on any
# machine, gather and assemble (finished seeds are resumed, missing ones measured):
#
#   mkdir -p docs/results/NAME/seeds && cp WORK/NAME/seed-*/seeds/*.json docs/results/NAME/seeds/
#   valleys reproduce NAME --preset full --out docs/results/NAME
set -u
WORK=${WORK:-/tmp/full}
JOBS=${JOBS:-$(nproc)}
DEADLINE=${DEADLINE:-3600}
PY=${PYTHON:-python3}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    mapfile -t names < <("$PY" -c "from valleys.experiments import EXPERIMENTS; print(*EXPERIMENTS, sep='\n')")
fi
mkdir -p "$WORK"
jobs_file="$WORK/jobs.txt"
: >"$jobs_file"
for name in "${names[@]}"; do
    seeds=$("$PY" -c "
from valleys.experiments import load_experiment
from valleys.experiments.driver import DEFAULT_SEEDS
e = load_experiment('$name')
print(' '.join(map(str, e.seeds.get('full', DEFAULT_SEEDS['full']))))")
    for seed in $seeds; do echo "$name $seed" >>"$jobs_file"; done
done
echo "$(wc -l <"$jobs_file") jobs, $JOBS at a time, deadline ${DEADLINE}s"
run_one() {
    local name=$1 seed=$2 start=$SECONDS
    OMP_NUM_THREADS=1 VALLEYS_CACHE_DIR="$WORK/cache-$name-$seed" "$PY" -c "
from valleys.experiments import run
run('$name', '$WORK/$name/seed-$seed', preset='full', seeds=[$seed], progress=False)
" >"$WORK/$name-seed-$seed.log" 2>&1
    echo "$name seed $seed: exit $? after $((SECONDS - start)) s"
}
export -f run_one
export WORK PY
timeout "$DEADLINE" xargs -P "$JOBS" -L 1 bash -c 'run_one "$0" "$1"' <"$jobs_file"
echo "done (exit $?)"
