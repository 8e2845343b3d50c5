"""Measure the real peak memory of `janus-ft convert` on a multi-shard random checkpoint.

    python docs/convert_memory.py [--workdir DIR] [--shard 50MB]

Builds a random bfloat16 transformers-native Janus of about 430 MB (tiny vision and VQ parts, a
14-layer 1024-wide language model) saved as 50 MB shards, then converts it to DeepSeek's layout
and back, each conversion in a fresh process. For each it prints:
- rss_peak_above_baseline: peak RSS (VmHWM) minus RSS before the conversion, measured after a
  warm-up conversion of the tiny model so that imported libraries are in the baseline;
- anon_peak_above_baseline: the same for anonymous memory only (RssAnon, sampled every 2 ms),
  i.e. without pages of the input files that the kernel can drop at will;
- converter_peak: the converter's own count of tensor bytes held at once (`peak_bytes`).
Results are in docs/convert_memory.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status() -> dict[str, int]:
    """VmRSS / VmHWM / RssAnon / RssFile of this process, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def build(directory: Path, shard: str) -> None:
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration

    from janus_ft.tiny import build_tiny

    build_tiny(directory)  # tokenizer, processor and a tiny config to grow
    config = JanusConfig.from_pretrained(directory)
    text = config.text_config
    text.vocab_size, text.hidden_size, text.intermediate_size = 16384, 1024, 2816
    text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads, text.head_dim = 14, 16, 16, 64
    config.vision_config.projection_dim = config.vq_config.projection_dim = 1024
    config.vq_config.image_token_embed_dim = 1024
    model = JanusForConditionalGeneration(config).to(torch.bfloat16)
    for old in directory.glob("model*.safetensors*"):
        old.unlink()
    model.save_pretrained(directory, max_shard_size=shard)


def measure(direction: str, source: Path, output: Path, shard: str, warmup: Path) -> dict:
    from janus_ft.export.convert import convert_from_deepseek, convert_to_deepseek

    convert = convert_to_deepseek if direction == "to" else convert_from_deepseek
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: every import and lazy init happens here
        convert(warmup, Path(tmp) / "out")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status()
    peak_anon, done = [baseline["RssAnon"]], threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status()["RssAnon"])
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    result = convert(source, output, max_shard_size=shard)
    seconds = time.time() - start
    done.set()
    sampler.join()
    end = _status()
    return {"direction": direction, "seconds": round(seconds, 1), "total_MB": result.total_bytes / 1e6,
            "input_shards": len(list(source.glob("*.safetensors"))), "output_shards": result.num_shards,
            "rss_peak_above_baseline_MB": (end["VmHWM"] - baseline["VmRSS"]) / 1e6,
            "anon_peak_above_baseline_MB": (peak_anon[0] - baseline["RssAnon"]) / 1e6,
            "converter_peak_MB": result.peak_bytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--shard", default="50MB")
    parser.add_argument("--child", nargs=4, metavar=("DIRECTION", "SOURCE", "OUTPUT", "WARMUP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        direction, source, output, warmup = args.child
        print(json.dumps(measure(direction, Path(source), Path(output), args.shard, Path(warmup))))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="convert-memory-"))
    native, tiny = work / "native", work / "tiny"
    if not native.exists():
        from janus_ft.export.convert import convert_to_deepseek
        from janus_ft.tiny import build_tiny

        build(native, args.shard)
        convert_to_deepseek(build_tiny(tiny), work / "tiny-deepseek")  # warm-up input for "--from"
    runs = [("to", native, work / "deepseek", tiny), ("from", work / "deepseek", work / "back", work / "tiny-deepseek")]
    for direction, source, output, warmup in runs:
        done = subprocess.run([sys.executable, __file__, "--shard", args.shard, "--child", direction,
                               str(source), str(output), str(warmup)], check=True, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
