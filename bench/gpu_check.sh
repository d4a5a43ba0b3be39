#!/usr/bin/env bash
# Every GPU measurement of the project in at most ~8 minutes on a bare GPU machine without network.
#
#   bash bench/gpu_check.sh LOGDIR [--dry-run]
#
# Needs python3 with torch, timm, pytorch_lightning, numpy and Pillow. Installs what the machine lacks
# (jsonargparse[signatures], albumentations and their deps) from the wheels in gpu_bundle/part*/wheels,
# installs this project with `pip install --no-deps -e .`, exports CIFAR-10 from the WebP mosaics in
# gpu_bundle/part*/data (built by bench/prepare_gpu_bundle.py), then runs, most important first:
#   train_speed    bench.train_speed: plain PyTorch loop vs the Lightning path (s/epoch, img/s, peak memory)
#   profile        bench.train_speed --profile: tensor-to-host reads per epoch on the GPU (each one a sync)
#   tta            time to accuracy: configs/cifar10_fast.yaml, seeds 0,1,2: mean/min test acc, fit time
#   augment_speed  bench.augment_speed: batch regularizers vs timm / torchvision
#   study          bench.study configs/studies/regularizers.yaml --scale short (~5 min alone; resumable)
#   recipe         configs/cifar10_resnet18.yaml once
# A budget guard (GPU_CHECK_BUDGET_S, default 470 s) skips a step, with a note, when the time left is
# under its estimate, and caps each step with `timeout`. Logs go to LOGDIR (8 files at most, so the
# device tool brings them all back); the summary table is printed last.
# --dry-run: check the bundle and export the data (no wheel install), then tiny CPU runs of
# train_speed and tta (the CUDA steps are skipped).
# Environment: PYTHON (python3), GPU_BUNDLE (gpu_bundle), CIFAR10_ROOT (data/cifar10), GPU_CHECK_WORK
# (/tmp/gpu_check: run folders, merged mosaics, study results), GPU_CHECK_BUDGET_S, GPU_CHECK_STEPS
# (comma list of the step names above; empty = all; setup always runs).
set -uo pipefail

usage() { echo "usage: bash bench/gpu_check.sh LOGDIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
LOGDIR=$1; shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
DATA=${CIFAR10_ROOT:-data/cifar10}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
STEPS=${GPU_CHECK_STEPS:-}  # comma list of train_speed,profile,tta,augment_speed,study,recipe (empty: all)
RESERVE=10
T0=$SECONDS
DEADLINE=$(($(date +%s) + BUDGET - RESERVE))  # wall clock (epoch s): child processes see it too
mkdir -p "$LOGDIR" "$WORK"
LOGDIR=$(cd "$LOGDIR" && pwd)
SUMMARY=$LOGDIR/summary.md
TABLES=$WORK/tables.md
: >"$TABLES"
printf '| step | status | s | note |\n| --- | --- | --- | --- |\n' >"$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

note() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"; echo "[gpu_check] $1: $2 ($3 s) $4"; }
left() { echo $((BUDGET - (SECONDS - T0))); }

# run_step NAME EST_S CAP_S LOG CMD...: run CMD under timeout unless the budget left is under EST_S.
run_step() {
  local name=$1 est=$2 cap=$3 log=$4
  shift 4
  local remaining limit start rc
  remaining=$(left)
  if [ "$remaining" -lt "$est" ]; then
    note "$name" skipped 0 "budget: ${remaining} s left, needs ~${est} s"
    return 1
  fi
  limit=$((remaining - RESERVE))
  [ "$limit" -gt "$cap" ] && limit=$cap
  start=$SECONDS
  echo "[gpu_check] $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >>"$LOGDIR/$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    note "$name" ok $((SECONDS - start)) "log: $log"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "$name" "timed out" $((SECONDS - start)) "limit ${limit} s; log: $log"
  else
    note "$name" "failed rc=$rc" $((SECONDS - start)) "see $log: $(tail -n 1 "$LOGDIR/$log" | tr '|' '/' | cut -c1-120)"
  fi
  return $rc
}

# add_table TITLE LOG: append the last markdown table of LOG to the summary tables (nothing if none).
add_table() {
  local table
  [ -f "$LOGDIR/$2" ] || return 0
  table=$(awk '/^\|/{if(!t){buf=""};t=1;buf=buf $0 "\n";next}{t=0}END{printf "%s", buf}' "$LOGDIR/$2")
  [ -n "$table" ] && printf '\n### %s\n%s\n' "$1" "$table" >>"$TABLES"
  return 0
}

# ------------------------------------------------------------------ setup: wheels, project, data
setup() {
  local wheels=() links=() part
  for part in "$BUNDLE"/part*/; do
    [ -d "$part/wheels" ] && wheels+=("$part/wheels")
  done
  echo "bundle parts: $(ls -d "$BUNDLE"/part*/ 2>/dev/null | tr '\n' ' ')"
  if [ $DRY -eq 1 ]; then
    "$PY" bench/prepare_gpu_bundle.py --check --out "$BUNDLE" || return 1
  elif "$PY" -c "import jsonargparse, docstring_parser, typeshed_client, albumentations" 2>/dev/null; then
    echo "jsonargparse[signatures] and albumentations already importable"
  elif [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in $BUNDLE/part*/wheels and jsonargparse is missing"; return 1
  else
    for part in "${wheels[@]}"; do links+=(--find-links "$part"); done
    "$PY" -m pip install -q --no-index "${links[@]}" "jsonargparse[signatures]" || return 1
    "$PY" -m pip install -q --no-index "${links[@]}" albumentations \
      || echo "NOTE: albumentations did not install (only loader=cpu needs it); going on"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
      || echo "NOTE: editable install failed; PYTHONPATH=$REPO is used instead"
  fi
  "$PY" -c "import torch, timm, pytorch_lightning, jsonargparse; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'lightning', pytorch_lightning.__version__, 'jsonargparse', jsonargparse.__version__)" || return 1
  export_data
}

export_data() {
  if [ -f "$DATA/cifar-10-batches-py/test_batch" ] && [ -f "$DATA/cifar-10-batches-py/data_batch_5" ]; then
    echo "CIFAR-10 already exported in $DATA"; return 0
  fi
  local merged=$WORK/mosaics exporter="" f
  rm -rf "$merged"; mkdir -p "$merged/cifar10"
  for f in "$BUNDLE"/part*/data/cifar10/*; do
    [ -f "$f" ] && ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$merged/cifar10/"
  done
  for f in "$BUNDLE"/part*/data/cifar_export.py; do [ -f "$f" ] && exporter=$f; done
  if [ -z "$exporter" ] && [ -f "$REPO/../shared/data/cifar_export.py" ]; then  # a developer machine
    exporter=$REPO/../shared/data/cifar_export.py; merged=$REPO/../shared/data
  fi
  if [ -z "$exporter" ] || [ ! -f "$merged/cifar10/SHA256SUMS" ]; then
    echo "no CIFAR-10 mosaics in $BUNDLE/part*/data: real-data steps will use synthetic data or skip"; return 0
  fi
  local want have
  want=$(grep -c . "$merged/cifar10/SHA256SUMS")
  have=$(ls "$merged/cifar10" | grep -vc SHA256SUMS)
  if [ "$have" -lt "$want" ]; then
    echo "only $have of $want CIFAR-10 files present (parts here: $(ls -d "$BUNDLE"/part*/ | tr '\n' ' '))."
    echo "Both parts are needed: part1 carried by the first device call, part2 by the second; if one is"
    echo "missing in the second call, the machine went cold between the calls (call again back to back)."
    return 0
  fi
  "$PY" "$exporter" cifar10 "$DATA" --format torchvision --verify --data-dir "$merged" || return 1
}

have_data() { [ -f "$DATA/cifar-10-batches-py/data_batch_5" ]; }

# time_to_accuracy CONFIG SEEDS [extra CLI args...]: fit+test per seed in one process (cudnn autotune once).
time_to_accuracy() {
  local config=$1 seeds=$2
  shift 2
  TTA_CONFIG=$config TTA_SEEDS=$seeds TTA_DEADLINE=$DEADLINE TTA_RUNS=$WORK/runs "$PY" - "$DATA" "$@" <<'EOF'
import json, os, statistics, sys, time

import torch

from models.run.cli import run

data_root, extra = sys.argv[1], sys.argv[2:]
config, seeds = os.environ["TTA_CONFIG"], [int(s) for s in os.environ["TTA_SEEDS"].split(",")]
deadline = int(os.environ["TTA_DEADLINE"])  # epoch seconds
runs = os.environ["TTA_RUNS"]
torch.set_float32_matmul_precision("high")
results, last = [], 0.0
for seed in seeds:
    remaining = deadline - time.time()
    if results and remaining < 1.2 * last:
        print(f"budget: {remaining:.0f} s left < {last:.0f} s per seed; stopping after {len(results)} seeds")
        break
    t = time.monotonic()
    metrics = run(["--config", config, "--seed_everything", str(seed), "--data.root", data_root,
                   "--data.download", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", runs, "--trainer.logger.init_args.save_dir", runs, *extra])
    last = time.monotonic() - t
    metrics["seed"], metrics["wall_s"] = seed, last
    print("RESULT " + json.dumps(metrics, default=str), flush=True)
    results.append(metrics)
accs = [m["test/acc"] for m in results if "test/acc" in m]
name = os.path.basename(config).removesuffix(".yaml")
print("\n| config | seeds | test acc mean | test acc min | fit s mean | epochs | wall s per seed |")
print("| --- | --- | --- | --- | --- | --- | --- |")
if accs:
    fit = statistics.mean(m["fit_time_s"] for m in results)
    wall = statistics.mean(m["wall_s"] for m in results)
    print(f"| {name} | {len(accs)} | {100 * statistics.mean(accs):.2f}% | {100 * min(accs):.2f}% | {fit:.1f} "
          f"| {results[0]['epochs']} | {wall:.1f} |")
    extra_keys = sorted({k for m in results for k in m if k.startswith("test/") and k != "test/acc"})
    for key in extra_keys:
        vals = [m[key] for m in results if key in m]
        print(f"{key}: mean {statistics.mean(vals):.4f} min {min(vals):.4f}")
else:
    print(f"| {name} | 0 | n/a | n/a | n/a | n/a | n/a |")
    sys.exit(1)
EOF
}

# ------------------------------------------------------------------ run
export PY BUNDLE DATA WORK DRY REPO DEADLINE
export -f setup export_data time_to_accuracy
echo "[gpu_check] repo $REPO, budget ${BUDGET} s, logs in $LOGDIR, dry-run $DRY"
if ! run_step setup 20 200 setup.log setup; then
  note summary aborted 0 "setup failed: see setup.log"
  cat "$SUMMARY"; exit 1
fi
DATA_ARGS=(--data-root "$DATA")
have_data || DATA_ARGS=()
have_data || note data synthetic 0 "no exported CIFAR-10: train_speed uses synthetic uint8 data"

wants() { [ -z "$STEPS" ] || [[ ",$STEPS," == *",$1,"* ]]; }
DATA_ABS=$(cd "$(dirname "$DATA")" 2>/dev/null && pwd)/$(basename "$DATA")

if [ $DRY -eq 1 ]; then
  wants train_speed && run_step "train_speed (cpu, tiny)" 10 120 train_speed.log \
    "$PY" -m bench.train_speed --device cpu --subset 256 --batch-size 64 --epochs 2 --threads 1 "${DATA_ARGS[@]}"
  add_table "train_speed (cpu, tiny)" train_speed.log
  if wants tta && have_data; then
    run_step "time to accuracy (cpu, tiny)" 10 240 tta.log time_to_accuracy configs/cifar10_fast.yaml 0 \
      --trainer.accelerator cpu --trainer.precision 32-true --trainer.max_epochs 1 --trainer.limit_train_batches 2 \
      --trainer.limit_val_batches 2 --trainer.limit_test_batches 2 --model.backbone test_resnet --data.batch_size 64
    add_table "time to accuracy (cpu, tiny)" tta.log
  fi
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note cuda "not available" 0 "no GPU: every CUDA step skipped"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader >>"$LOGDIR/setup.log" 2>&1
  if wants train_speed; then
    run_step train_speed 60 150 train_speed.log "$PY" -m bench.train_speed --device cuda --guard-every 50 "${DATA_ARGS[@]}"
    add_table "train_speed: plain loop vs Lightning" train_speed.log
  fi
  if wants profile; then  # host reads per epoch on the real device: each one a sync
    run_step "train_speed --profile" 25 60 train_speed.log \
      "$PY" -m bench.train_speed --device cuda --profile --subset 10240 "${DATA_ARGS[@]}"
    add_table "tensor-to-host calls per epoch (CUDA)" train_speed.log
  fi
  if wants tta; then
    if have_data; then
      run_step "time to accuracy cifar10_fast x3" 60 200 tta.log time_to_accuracy configs/cifar10_fast.yaml 0,1,2
      add_table "time to accuracy" tta.log
    else
      note "time to accuracy" skipped 0 "no CIFAR-10 data"
    fi
  fi
  if wants augment_speed; then
    run_step augment_speed 20 60 augment_speed.log "$PY" -m bench.augment_speed --device cuda
    add_table "augment_speed (ms per batch)" augment_speed.log
  fi
  if wants study; then
    if have_data && [ -f configs/studies/regularizers.yaml ]; then
      # resumable: runs already in results.csv are skipped, so a second call finishes the study
      run_step "study regularizers short" 60 400 study.log "$PY" -m bench.study configs/studies/regularizers.yaml \
        --scale short --out "$WORK/studies" --set "data.root=$DATA_ABS" --set data.download=false
      "$PY" -m bench.study configs/studies/regularizers.yaml --out "$WORK/studies" --report-only >>"$LOGDIR/study.log" 2>&1
      cat "$WORK"/studies/regularizers/results.md >>"$LOGDIR/study.log" 2>/dev/null
      cp "$WORK"/studies/regularizers/results.csv "$LOGDIR/study_results.csv" 2>/dev/null
      add_table "study regularizers (short)" study.log
    else
      note "study regularizers short" skipped 0 "no data or no configs/studies/regularizers.yaml"
    fi
  fi
  if wants recipe && have_data; then
    run_step "recipe cifar10_resnet18 x1" 200 300 recipe.log time_to_accuracy configs/cifar10_resnet18.yaml 0
    add_table "recipe (cifar10_resnet18, 1 seed)" recipe.log
  fi
fi

note total done $((SECONDS - T0)) "budget ${BUDGET} s"
cat "$TABLES" >>"$SUMMARY"
echo
echo "================ gpu_check summary ($(date -u +%FT%TZ)) ================"
cat "$SUMMARY"
