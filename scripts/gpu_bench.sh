#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md: random-weight models of Janus-Pro-1B / 7B size (bf16),
# LoRA and QLoRA, the 5:1:4 sample mix packed 3 samples to a row (~1.7-2k tokens).
#
#   scripts/gpu_bench.sh 1b|7b|tiny OUTDIR      (tiny: a quick dry run of the same commands on CPU)
#
# Writes OUTDIR/<size>-<run>.json per run and OUTDIR/<size>.log, and prints each run's table.
set -uo pipefail
size=${1:?size: 1b, 7b or tiny}
out=${2:?output directory}
mkdir -p "$out"
export JANUS_FT_CACHE=${JANUS_FT_CACHE:-/tmp/janus_ft_cache} PYTHONUNBUFFERED=1
log="$out/$size.log"

common=(model.dtype=bfloat16 data.max_length=2048 data.packing=true train.per_device_train_batch_size=3
        train.gradient_accumulation_steps=4 train.disable_tqdm=true --recipe recipes/demo.yaml --steps 6 --warmup 2)
if [ "$size" = tiny ]; then
  common=(data.packing=true train.disable_tqdm=true --recipe recipes/demo.yaml --steps 2 --warmup 1)
else
  common+=(--random-model "janus-pro-$size")
fi

bench() {   # NAME [--option ...] [section.key=value ...]: overrides last, next to the common ones
  local name=$1
  shift
  echo "=== $size-$name: janus-ft bench $* ${common[*]}" | tee -a "$log"
  local start=$SECONDS
  python3 -m janus_ft.cli bench "$@" "${common[@]}" --json "$out/$size-$name.json" >> "$log" 2>&1
  local rc=$?
  # the last table in the log is the side-by-side one
  tac "$log" | sed '/^janus-ft bench:/q' | tac
  echo "($size-$name: exit $rc, $((SECONDS - start)) s)"
}

case "$size" in
  7b)
    bench lora --compare checkpointing
    bench qlora --compare bare model.quantization=4bit
    ;;
  *)
    bench lora --compare bare --rounds 2
    bench qlora model.quantization=4bit
    bench cache --compare cache "data.mix={generation: 1}"
    bench ckpt --compare checkpointing
    ;;
esac
