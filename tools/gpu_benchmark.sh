#!/usr/bin/env bash
# The GPU tables of BUILD.md in one run of under 8 minutes, from the repo root:
#
#   source .wheels/setup.sh && OUT=/path/to/results bash tools/gpu_benchmark.sh
#   ROWS=keras_cnn_small,torch_cnn_small OUT=... bash tools/gpu_benchmark.sh
#   SMOKE=1 TIMEOUT_SCALE=4 BUDGET=1200 bash tools/gpu_benchmark.sh  # CPU check
#
# ROWS (comma-separated measurement names, below: ROW_NAMES) runs only those,
# in the script's order: a second call in the same lease measures what the
# first had no time for, and `tools/gpu_report.py first second` joins both
# calls' results into one set of tables.
#
# Every measurement is its own process (tools/benchmark.py --peer=...: the
# engine's own step, or a peer) under its own `timeout`, in priority order:
# gzjax's rows, then the big backbones' peers (the comparison BUILD.md still
# lacks), B0 without autotuning, the end-to-end rows, the seed CNN's peers,
# start-up, survey prediction, the batch-1024 peers.  The whole run keeps to
# $BUDGET seconds (default 450): each timeout is cut to what is left, and a
# measurement with under 15 s left is skipped and marked so, never started.
# Results go to "$OUT" (default ./gpu_results) as they come: <name>.json
# (the measurement's JSON line), <name>.err (its stderr), status.tsv (name,
# exit status, seconds), versions.txt, startup.md, and at the end tables.md
# (tools/gpu_report.py).  Needs no network and no dataset: the step
# benchmarks use random batches, the end-to-end rows render a small
# synthetic Galaxy Zoo set.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_results}"
BUDGET="${BUDGET:-450}"
SCALE="${TIMEOUT_SCALE:-1}"  # Multiplies every timeout (a slow smoke host).
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ROW_NAMES=(gzjax_cnn_small gzjax_b0 gzjax_inception gzjax_cnn_large
  torch_b0 keras_b0 torch_inception keras_inception gzjax_b0_autotune0
  e2e_gzjax e2e_torch keras_cnn_small torch_cnn_small startup predict
  keras_cnn_large torch_cnn_large)
ROWS="${ROWS:-}"
for row in ${ROWS//,/ }; do
  if [[ " ${ROW_NAMES[*]} " != *" $row "* ]]; then
    echo "gpu_benchmark.sh: ROWS names '$row', which is not a measurement;" \
      "use names from: ${ROW_NAMES[*]}" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
START=$(date +%s)

# selected NAME: whether ROWS (unset: every row) asks for NAME; the
# end-to-end rows' synthetic set is rendered when either of them is asked.
selected() {
  [[ -z "$ROWS" ]] && return 0
  [[ $1 == e2e_render ]] && { selected e2e_gzjax || selected e2e_torch; return; }
  [[ ",$ROWS," == *",$1,"* ]]
}

if [[ "${SMOKE:-0}" == 1 ]]; then
  CNN=32; B0=32; INCEPTION=75; SMALL=8; LARGE=16; B0_BATCH=4; INC_BATCH=2
  STEPS=(--steps=2 --repeats=1); E2E_STEPS=6; E2E_GALAXIES=64
  TORCH=(--notorch_compile); STARTUP=(--models=cnn:32 --batch_size=2)
else
  CNN=64; B0=224; INCEPTION=299; SMALL=256; LARGE=1024; B0_BATCH=128
  INC_BATCH=64; STEPS=(--steps=10 --repeats=3)
  E2E_STEPS=200; E2E_GALAXIES=1000; TORCH=(--torch_compile)
  STARTUP=(--models=cnn,efficientnet_b0 --batch_size=8)
fi

# measure NAME TIMEOUT COMMAND...: runs it if the budget allows.
measure() {
  local name=$1 limit=$2 left
  shift 2
  selected "$name" || return 0
  limit=$(( limit * SCALE ))
  left=$(( BUDGET - ($(date +%s) - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then
    printf '%s\tskipped: %s s of the budget left\t0\n' "$name" "$left" \
      >> "$OUT/status.tsv"
    return
  fi
  local begin=$(date +%s) rc
  echo "== $name (timeout ${limit}s)" >&2
  timeout -k 5 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  rc=$?
  tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - begin ))" \
    >> "$OUT/status.tsv"
}

# peer NAME TIMEOUT PEER MODEL SIZE BATCH [more flags]: one training peer.
peer() {
  local name=$1 limit=$2 which=$3 model=$4 size=$5 batch=$6
  shift 6
  # The smoke run (2 CPU cores) keeps to the seed CNN.
  [[ "${SMOKE:-0}" == 1 && $model != cnn ]] && return
  local backend=""
  [[ $which == keras_jax ]] && backend=jax
  measure "$name" "$limit" env ${backend:+KERAS_BACKEND=$backend} \
    "$PY" tools/benchmark.py --peer="$which" --model="$model" \
    --image_size="$size" --batch_size="$batch" "${STEPS[@]}" "$@"
}

cat > "$OUT/settings.json" <<EOF
{"cnn": $CNN, "b0": $B0, "inception": $INCEPTION, "small": $SMALL,
 "large": $LARGE, "b0_batch": $B0_BATCH, "inception_batch": $INC_BATCH,
 "e2e_steps": $E2E_STEPS, "steps": "${STEPS[*]}", "smoke": ${SMOKE:-0}}
EOF
{
  date -u
  nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'
  KERAS_BACKEND=jax "$PY" - <<'EOF'
import importlib, platform
print('python', platform.python_version())
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'grain',
             'torch', 'timm', 'keras', 'numpy'):
  try:
    print(name, importlib.import_module(name).__version__)
  except Exception as error:  # pylint: disable=broad-except
    print(name, 'missing:', type(error).__name__)
import jax
print('devices', jax.devices())
EOF
} > "$OUT/versions.txt" 2>&1

# gzjax's rows: every one must be measured.
peer gzjax_cnn_small 40 gzjax cnn $CNN $SMALL
peer gzjax_b0 120 gzjax efficientnet_b0 $B0 $B0_BATCH
peer gzjax_inception 90 gzjax inception_v3 $INCEPTION $INC_BATCH
peer gzjax_cnn_large 30 gzjax cnn $CNN $LARGE
# The big backbones' peers: torch.compile's and Keras's warm-ups took over
# 60-90 s for these on an H200 (2026-11-28), hence their longer timeouts.
peer torch_b0 150 torch efficientnet_b0 $B0 $B0_BATCH "${TORCH[@]}"
peer keras_b0 150 keras_jax efficientnet_b0 $B0 $B0_BATCH
peer torch_inception 150 torch inception_v3 $INCEPTION $INC_BATCH "${TORCH[@]}"
peer keras_inception 150 keras_jax inception_v3 $INCEPTION $INC_BATCH
# B0's compile without XLA's kernel autotuning (most of its 81.6 s warm-up
# on the H200), and what that costs its step.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
  peer gzjax_b0_autotune0 90 gzjax efficientnet_b0 $B0 $B0_BATCH
# What a user feels: input pipeline + augmentation + step.
E2E_DIR=$(mktemp -d)
measure e2e_render 40 "$PY" -c "import sys; sys.path.insert(0, 'tools')
import benchmark
benchmark.render_synthetic('$E2E_DIR', $CNN, $E2E_GALAXIES)"
peer e2e_gzjax 60 gzjax_e2e cnn $CNN $SMALL --e2e_steps=$E2E_STEPS \
  --peer_data_dir="$E2E_DIR"
peer e2e_torch 60 torch_e2e cnn $CNN $SMALL --e2e_steps=$E2E_STEPS \
  --peer_data_dir="$E2E_DIR" --workers="$(nproc)" "${TORCH[@]}"
rm -rf "$E2E_DIR"
# The seed CNN's peers, the cheapest first.
peer keras_cnn_small 40 keras_jax cnn $CNN $SMALL
peer torch_cnn_small 60 torch cnn $CNN $SMALL "${TORCH[@]}"
# Start-up: creation, cold compile, first step, warm-cache compile.
measure startup 80 "$PY" tools/startup_benchmark.py "${STARTUP[@]}" \
  --timeout=$(( 35 * SCALE ))
cp "$OUT/startup.out" "$OUT/startup.md" 2>/dev/null
# Survey prediction (gzjax.predict against a DataLoader + eval-mode PyTorch
# loop), 8 decoding workers; its table is in predict.out.
if [[ "${SMOKE:-0}" != 1 ]]; then
  PREDICT_DIR=$(mktemp -d)
  measure predict 90 "$PY" tools/benchmark_predict.py --out="$PREDICT_DIR" \
    --predict_models=cnn,efficientnet_b0 --worker_counts=8 --rss_counts=
  rm -rf "$PREDICT_DIR"
fi
peer keras_cnn_large 30 keras_jax cnn $CNN $LARGE
peer torch_cnn_large 40 torch cnn $CNN $LARGE "${TORCH[@]}"

"$PY" tools/gpu_report.py "$OUT" > "$OUT/tables.md"
cat "$OUT/tables.md"
echo "total $(( $(date +%s) - START )) s of a $BUDGET s budget" \
  | tee -a "$OUT/tables.md"
