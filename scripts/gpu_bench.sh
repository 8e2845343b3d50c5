#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md: random-weight models of Janus-Pro-1B / 7B size (bf16), LoRA
# and QLoRA, the 5:1:4 sample mix packed 3 samples to a row (~1.7-2k tokens).
#
#   scripts/gpu_bench.sh 1b|7b|tiny OUTDIR      (tiny: a CPU dry run of the same commands, ~1 minute)
#
# OUTDIR/<size>.md gets the tables in docs/benchmarks.md's format:
#   1. levers, each on and off (`janus-ft bench --levers`): per-sample attention in packed rows,
#      chunked heads, compiled decoder layers, data worker processes -- s/step, tokens/s, MFU, peak
#      memory; a lever whose recipe key this build lacks is listed as skipped;
#   2. the memory of one step split by component (`janus-ft bench --memory`): QLoRA (4-bit) with
#      checkpointing at 2k tokens, an understanding step and a generation step;
#   3. (1b / 7b) the framework comparisons: LoRA vs the bare loop, QLoRA, VQ cache, checkpointing.
# OUTDIR/<size>-<run>.json hold every number, OUTDIR/<size>.log the console output.
set -uo pipefail
size=${1:?size: 1b, 7b or tiny}
out=${2:?output directory}
mkdir -p "$out"
export JANUS_FT_CACHE=${JANUS_FT_CACHE:-/tmp/janus_ft_cache} PYTHONUNBUFFERED=1
log="$out/$size.log"
md="$out/$size.md"
: > "$md"

common=(model.dtype=bfloat16 data.max_length=2048 data.packing=true train.per_device_train_batch_size=3
        train.gradient_accumulation_steps=4 train.disable_tqdm=true --recipe recipes/demo.yaml --steps 6 --warmup 2)
memory=(model.dtype=bfloat16 model.quantization=4bit train.gradient_checkpointing=true
        train.per_device_train_batch_size=1 --recipe recipes/demo.yaml)
tokens=2048
if [ "$size" = tiny ]; then
  common=(data.packing=true train.disable_tqdm=true --recipe recipes/demo.yaml --steps 1 --warmup 1)
  memory=(train.gradient_checkpointing=true train.per_device_train_batch_size=1 --recipe recipes/demo.yaml)
  tokens=64
else
  common+=(--random-model "janus-pro-$size")
  memory+=(--random-model "janus-pro-$size")
fi

bench() {   # NAME TITLE [janus-ft bench arguments ...]: run it, append its table to OUTDIR/<size>.md
  local name=$1 title=$2
  shift 2
  echo "=== $size-$name: janus-ft bench $*" | tee -a "$log"
  local start=$SECONDS
  python3 -m janus_ft.cli bench "$@" --json "$out/$size-$name.json" > "$out/$size-$name.txt" 2>> "$log"
  local rc=$?
  cat "$out/$size-$name.txt" >> "$log"
  {
    echo "### $title"
    echo
    echo '```bash'
    echo "janus-ft bench $*"
    echo '```'
    echo
    # the table, from the line `janus-ft bench` prints above it; a plain-text one in a code block
    if grep -q '^|' "$out/$size-$name.txt"; then
      sed -n '/^janus-ft bench/,$p' "$out/$size-$name.txt"
    else
      echo '```text'
      sed -n '/^janus-ft bench/,$p' "$out/$size-$name.txt"
      echo '```'
    fi
    echo
  } >> "$md"
  echo "($size-$name: exit $rc, $((SECONDS - start)) s)" | tee -a "$log"
}

bench levers "Levers on and off, $size" --levers "${common[@]}"
bench memory-understanding "Memory of one understanding step, $size" --memory "understanding:$tokens" "${memory[@]}"
bench memory-generation "Memory of one generation step, $size" --memory "generation:$tokens" "${memory[@]}"

case "$size" in
  7b)
    bench lora "LoRA with and without checkpointing, 7b" --compare checkpointing "${common[@]}"
    bench qlora "QLoRA vs the bare loop, 7b" --compare bare model.quantization=4bit "${common[@]}"
    ;;
  1b)
    bench lora "LoRA vs the bare loop, 1b" --compare bare --rounds 2 "${common[@]}"
    bench qlora "QLoRA, 1b" model.quantization=4bit "${common[@]}"
    bench cache "VQ code cache vs re-encoding, 1b" --compare cache "data.mix={generation: 1}" "${common[@]}"
    bench ckpt "Checkpointing, 1b" --compare checkpointing "${common[@]}"
    ;;
esac
cat "$md"
