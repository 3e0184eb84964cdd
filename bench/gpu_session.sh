#!/usr/bin/env bash
# The GPU runs issues #10, #11 and #14 are owed, in stages that each fit one call of a lent GPU machine (< 10 min),
# so a 30-minute lease does all of it: run from the repository root after `source .gpu-bundle/env.sh`.
#
#   bash bench/gpu_session.sh acceptance       # #10: make test-gpu; every method on real RTE and MRPC; smoke grid
#   bash bench/gpu_session.sh speed            # #11: bench/gpu_step.py (BERT-base, MiniLM); plan --calibrate and
#                                              #      workers_per_gpu on configs/gpu_speed.yaml
#   bash bench/gpu_session.sh grid [SECONDS]   # #14: configs/minilm_gpu.yaml for SECONDS (default 480), then
#                                              #      SIGTERM: finished cells stay, cells in flight save their state
#
# Everything it keeps goes to $OUT (the device tool's folder; elsewhere runs/gpu-session): logs, a summary and one
# tarball per stage, at most 8 files. Model weights never leave the machine. The grid's output lives in
# runs/minilm-gpu, which a warm machine keeps between calls (the next `grid` call continues it); on a fresh
# machine the stage first unpacks .gpu-state/minilm-gpu.tar.gz (the tarball an earlier call returned, carried in).
set -uo pipefail
stage=${1:?usage: bash bench/gpu_session.sh acceptance|speed|grid [SECONDS]}
out=${OUT:-runs/gpu-session}
work=runs/gpu-session-work
mkdir -p "$out" "$work"
python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu_session.sh: no CUDA device here" >&2; exit 2; }
: "${GLUE_DIR:?set GLUE_DIR (source .gpu-bundle/env.sh sets it)}"
spd_bench() { python3 -m harness.cli "$@"; }
# a run directory's record without its weights (the tarballs stay a few MB)
pack() { tar czf "$1" --exclude=model --exclude=cache --exclude='.*.state' --exclude=.runner.lock -C "$2" "$3"; }

acceptance() {
  # the suite with its cuda tier, beside the runs (it is CPU-bound; they are GPU-bound); in 6 processes where
  # pytest-xdist is installed (the device image has it), so it ends well inside the call's 10 minutes
  local xdist=()
  python3 -c 'import xdist' 2>/dev/null && xdist=(-n 6 --dist loadfile)
  OMP_NUM_THREADS=1 SPD_BENCH_REQUIRE_CUDA=1 python3 -m pytest -q -p no:cacheprovider --ignore=tests/test_docker.py \
    "${xdist[@]}" >"$out/test-gpu.log" 2>&1 &
  local tests=$!
  # every built-in method on real RTE and MRPC, a few hundred steps each (pruning stage 2 epochs: most steps are
  # not pruning events), all at once on the one GPU; one teacher per task, shared through the cache's lock
  local pids=() m t
  for t in rte mrpc; do
    for m in spd sparse-kd sparse-ft sparse-progressive theseus dense; do
      case $m in
        theseus) set -- epochs=4 ;;
        dense) set -- ;;
        *) set -- prune_epochs=2 graft_epochs=1 finetune_epochs=1 ;;
      esac
      spd_bench run --task $t --method $m --model minilm --glue-dir "$GLUE_DIR" --sparsity 0.9 --seed 42 \
        --out "$work/runs/$t-$m" --cache "$work/cache" --quiet save_model=false "$@" \
        >"$work/$t-$m.log" 2>&1 &
      pids+=($!)
    done
  done
  local failed=0 p
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  tail -n 1 "$work"/*.log >"$out/methods.log"
  echo "methods: $failed of ${#pids[@]} runs failed" | tee -a "$out/methods.log"
  python3 - "$work/runs" >"$out/methods.md" <<'PY'
import json, sys
from pathlib import Path
rows = ["| run | steps | dev | achieved sparsity | precision | device |", "|---|---|---|---|---|---|"]
for d in sorted(Path(sys.argv[1]).iterdir()):
    m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else None
    if m is None:
        rows.append(f"| {d.name} | FAILED | | | | |")
        continue
    dev = json.loads((d / "manifest.json").read_text())["device"]
    rows.append(f"| {d.name} | {m['final']['step']} | {m['final']['dev']['score']:.2f} | "
                f"{m.get('achieved_sparsity', 0):.4f} | {m.get('precision')} | {dev} |")
print("\n".join(rows))
PY
  spd_bench run configs/smoke.yaml --out "$work/smoke" --quiet >"$out/smoke.log" 2>&1
  echo "smoke grid: exit $?" >>"$out/smoke.log"
  wait "$tests"
  echo "make test-gpu: exit $?" >>"$out/test-gpu.log"
  tail -n 3 "$out/test-gpu.log"
  pack "$out/acceptance.tar.gz" "$work" runs
  tar czf "$out/smoke-tables.tar.gz" -C "$work/smoke" table1.md table2.md table3.md
}

speed() {
  for model in bert-base minilm; do
    python3 bench/gpu_step.py --model $model >"$out/gpu_step-$model.log" 2>&1
    echo "gpu_step $model: exit $?" >>"$out/gpu_step-$model.log"
  done
  python3 bench/calibrate_check.py configs/gpu_speed.yaml --workers 4 >"$out/calibrate_check.log" 2>&1
  echo "calibrate_check: exit $?" >>"$out/calibrate_check.log"
  cp docs/performance.md "$out/performance.md"    # with the GPU sections these scripts wrote
}

grid() {
  local seconds=${1:-480} dir=runs/minilm-gpu
  if [ ! -d $dir ] && [ -f .gpu-state/minilm-gpu.tar.gz ]; then
    tar xzf .gpu-state/minilm-gpu.tar.gz -C runs
  fi
  # --preserve-status: 143 when SIGTERM stopped it (state saved), 0 when the grid finished
  timeout --preserve-status -s TERM -k 45 "$seconds" \
    python3 -m harness.cli run configs/minilm_gpu.yaml --out $dir --glue-dir "$GLUE_DIR" --quiet \
    >"$out/grid.log" 2>&1
  echo "grid: exit $? after at most ${seconds}s" >>"$out/grid.log"
  spd_bench status $dir >"$out/grid-status.txt" 2>&1
  pack "$out/minilm-gpu.tar.gz" runs minilm-gpu
  tail -n 2 "$out/grid.log"; tail -n 3 "$out/grid-status.txt"
}

case $stage in
  acceptance|speed) shift; $stage "$@" ;;
  grid) shift; grid "$@" ;;
  *) echo "gpu_session.sh: unknown stage '$stage' (acceptance, speed or grid)" >&2; exit 2 ;;
esac
