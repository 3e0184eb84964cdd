#!/usr/bin/env bash
# The GPU runs issues #10, #11 and #14 are owed, in stages that each fit one call of a lent GPU machine (< 10 min),
# so a 30-minute lease does all of it: run from the repository root after `source .gpu-bundle/env.sh &&`.
#
#   bash bench/gpu_session.sh acceptance       # #10: make test-gpu; every method on real RTE and MRPC; smoke grid
#   bash bench/gpu_session.sh speed            # #11: bench/gpu_step.py (BERT-base, MiniLM); plan --calibrate and
#                                              #      workers_per_gpu on configs/gpu_speed.yaml
#   bash bench/gpu_session.sh grid [SECONDS]   # #14: configs/minilm_gpu.yaml for SECONDS (default 480), then
#                                              #      SIGTERM: finished cells stay, cells in flight save their state
#
# Everything it keeps goes to $OUT (the device tool's folder; elsewhere runs/gpu-session): logs, a summary and one
# tarball per stage, at most 8 files. Model weights never leave the machine. Every part has its own time limit, so
# a stage returns what it has inside the call's 10 minutes. The grid's output lives in runs/minilm-gpu, which a
# warm machine keeps between calls (the next `grid` call continues it); on a fresh machine the stage first unpacks
# .gpu-state/minilm-gpu.tar.gz (the tarball an earlier call returned, carried in). The device's copy of the tree
# has no .git: give the commit as SPD_BENCH_GIT_SHA=<sha> so every result records it.
set -uo pipefail
stage=${1:?usage: bash bench/gpu_session.sh acceptance|speed|grid [SECONDS]}
out=${OUT:-runs/gpu-session}
work=runs/gpu-session-work
mkdir -p "$out" "$work"
python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu_session.sh: no CUDA device here" >&2; exit 2; }
: "${GLUE_DIR:?set GLUE_DIR (source .gpu-bundle/env.sh sets it)}"
export SPD_BENCH_GIT_SHA=${SPD_BENCH_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null)}
[ -n "$SPD_BENCH_GIT_SHA" ] || { echo "gpu_session.sh: no .git here: run it as SPD_BENCH_GIT_SHA=<commit> bash $0 $*" >&2; exit 2; }
# what the image has that the runs rely on (a missing one explains a failure before its log does)
python3 - <<'PY' | tee "$out/preflight.txt"
import importlib.metadata as md, os, shutil, torch
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "MISSING"
names = ("torch", "transformers", "datasets", "pyarrow", "fsspec", "pydantic", "submitit", "pytest", "pytest-xdist")
print("preflight:", ", ".join(f"{n} {version(n)}" for n in names), "|", torch.cuda.get_device_name(0),
      "| tools:", ", ".join(f"{t} {'yes' if shutil.which(t) else 'no'}" for t in ("git", "make", "nvidia-smi")),
      "| commit", os.environ["SPD_BENCH_GIT_SHA"][:12])
PY
spd_bench() { python3 -m harness.cli "$@"; }
# a run directory's record without its weights (the tarballs stay a few MB)
pack() { tar czf "$1" --exclude=model --exclude=cache --exclude='.*.state' --exclude=.runner.lock -C "$2" "$3"; }
# "PART: exit N" for a part's log, and whether `timeout` stopped it
ended() { echo "$1: exit $2$(case $2 in 124|137) echo ' (stopped at its time limit)' ;; esac)"; }

acceptance() {
  # the suite with its cuda tier, beside the runs (it is CPU-bound; they are GPU-bound); in 6 processes where
  # pytest-xdist is installed (the device image has it); the tests outside the cuda tier run on the CPU (conftest)
  local xdist=()
  python3 -c 'import xdist' 2>/dev/null && xdist=(-n 6 --dist loadfile)
  OMP_NUM_THREADS=1 SPD_BENCH_REQUIRE_CUDA=1 timeout -k 15 480 python3 -m pytest -q -p no:cacheprovider \
    --ignore=tests/test_docker.py "${xdist[@]}" >"$out/test-gpu.log" 2>&1 &
  local tests=$!
  # every built-in method on real RTE and MRPC, a few hundred steps each (pruning stage 2 epochs: most steps are
  # not pruning events), all at once on the one GPU; one teacher per task, shared through the cache's lock
  local pids=() names=() m t
  for t in rte mrpc; do
    for m in spd sparse-kd sparse-ft sparse-progressive theseus dense; do
      case $m in
        theseus) set -- epochs=4 ;;
        dense) set -- ;;
        *) set -- prune_epochs=2 graft_epochs=1 finetune_epochs=1 ;;
      esac
      OMP_NUM_THREADS=2 timeout -k 15 300 python3 -m harness.cli run --task $t --method $m --model minilm \
        --glue-dir "$GLUE_DIR" --sparsity 0.9 --seed 42 --out "$work/runs/$t-$m" --cache "$work/cache" --quiet \
        save_model=false "$@" >"$work/$t-$m.log" 2>&1 &
      pids+=($!) names+=("$t-$m")
    done
  done
  local failed=0 i rc
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?
    echo $rc >"$work/${names[$i]}.rc"
    [ $rc = 0 ] || failed=$((failed + 1))
  done
  tail -n 1 "$work"/*.log >"$out/methods.log"
  echo "methods: $failed of ${#pids[@]} runs failed" | tee -a "$out/methods.log"
  python3 - "$work" "${names[@]}" >"$out/methods.md" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = ["| run | steps | dev | achieved sparsity | precision | device |", "|---|---|---|---|---|---|"]
for name in sys.argv[2:]:
    run = work / "runs" / name
    if not (run / "metrics.json").exists():    # a failed run leaves no run directory: its log's last line says why
        rc = (work / f"{name}.rc").read_text().strip()
        last = ((work / f"{name}.log").read_text().strip().splitlines() or ["no output"])[-1]
        why = " (its time limit)" if rc in ("124", "137") else ""
        rows.append(f"| {name} | FAILED, exit {rc}{why}: {last[:150].replace('|', '/')} | | | | |")
        continue
    m = json.loads((run / "metrics.json").read_text())
    rows.append(f"| {name} | {m['final']['step']} | {m['final']['dev']['score']:.2f} | "
                f"{m.get('achieved_sparsity', 0):.4f} | {m.get('precision')} | "
                f"{json.loads((run / 'manifest.json').read_text())['device']} |")
print("\n".join(rows))
PY
  timeout -k 15 150 python3 -m harness.cli run configs/smoke.yaml --out "$work/smoke" --quiet >"$out/smoke.log" 2>&1
  ended "smoke grid" $? >>"$out/smoke.log"
  wait "$tests"
  ended "make test-gpu" $? >>"$out/test-gpu.log"
  tail -n 3 "$out/test-gpu.log"
  [ -d "$work/runs" ] && pack "$out/acceptance.tar.gz" "$work" runs
  ls "$work"/smoke/table*.md >/dev/null 2>&1 && tar czf "$out/smoke-tables.tar.gz" -C "$work/smoke" \
    $(cd "$work/smoke" && ls table*.md)
}

speed() {
  # each script under its own limit, performance.md copied after each, so a slow one costs only itself
  local name limit
  for name in bert-base:190 minilm:110; do
    limit=${name#*:} name=${name%:*}
    timeout -k 15 "$limit" python3 bench/gpu_step.py --model "$name" >"$out/gpu_step-$name.log" 2>&1
    ended "gpu_step $name" $? >>"$out/gpu_step-$name.log"
    cp docs/performance.md "$out/performance.md"    # with the GPU sections these scripts wrote
  done
  timeout -k 15 240 python3 bench/calibrate_check.py configs/gpu_speed.yaml --workers 4 >"$out/calibrate_check.log" 2>&1
  ended calibrate_check $? >>"$out/calibrate_check.log"
  cp docs/performance.md "$out/performance.md"
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
  ended "grid (at most ${seconds}s; 143: stopped by its SIGTERM, state saved)" $? >>"$out/grid.log"
  spd_bench status $dir >"$out/grid-status.txt" 2>&1
  pack "$out/minilm-gpu.tar.gz" runs minilm-gpu
  tail -n 2 "$out/grid.log"; tail -n 3 "$out/grid-status.txt"
}

case $stage in
  acceptance|speed) shift; $stage "$@" ;;
  grid) shift; grid "$@" ;;
  *) echo "gpu_session.sh: unknown stage '$stage' (acceptance, speed or grid)" >&2; exit 2 ;;
esac
