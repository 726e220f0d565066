#!/usr/bin/env bash
# Cache a stream once, then finetune on it many times with DeepSpeed.
#
#   examples/cache_then_finetune.sh [CONFIG] [OUT_DIR]
#
# Defaults to the demo data (built if missing). The caching run decodes, converts to
# MiniCPM-V's format and filters by length exactly as T2Vid's extract/reformat/filter
# scripts did, and writes JPEG frames plus one data.json in T2Vid's format. The
# finetune command is printed, not run: it needs MiniCPM-V's finetune.py and GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
MMSTREAM=${MMSTREAM:-.venv/bin/mmstream}
PY=${PY:-.venv/bin/python}
CONFIG=${1:-}
OUT=${2:-build/cache_then_finetune}
if [ -z "$CONFIG" ]; then
  CONFIG=$($PY -m mmstream.demo build/demo)
fi

# 1. cache: resumable (rerun after a kill continues), parallel (--workers), multi-node
#    (--rank/--world-size, or torchrun/SLURM env; the last rank writes data.json)
$MMSTREAM cache "$CONFIG" --output "$OUT" --format minicpmv --layout files --workers 2
$MMSTREAM verify "$OUT"

# 2. the DeepSpeed finetune that consumes it (T2Vid's settings, REFERENCE section 7:
#    8 GPUs x batch 2 x accumulation 4 = 64, 1 epoch, ZeRO-3 with CPU offload,
#    max_length 8666, no slicing), run from a MiniCPM-V checkout's finetune/ folder:
cat <<CMD

# Run from MiniCPM-V/finetune (not run here):
torchrun --nproc_per_node=8 --nnodes=1 finetune.py \\
  --model_name_or_path openbmb/MiniCPM-Llama3-V-2_5 --llm_type llama3 \\
  --data_path $(realpath "$OUT")/data.json \\
  --remove_unused_columns false --label_names labels --prediction_loss_only false \\
  --bf16 true --do_train --tune_vision true --tune_llm true \\
  --model_max_length 8666 --max_slice_nums 1 \\
  --per_device_train_batch_size 2 --gradient_accumulation_steps 4 --num_train_epochs 1 \\
  --learning_rate 1e-6 --weight_decay 0.1 --warmup_ratio 0.01 --lr_scheduler_type cosine \\
  --gradient_checkpointing true --save_strategy steps --save_steps 1000 --logging_steps 10 \\
  --output_dir output/t2vid_minicpmv --deepspeed ds_config_zero3_offload.json
CMD
