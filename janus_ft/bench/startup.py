"""`janus-ft bench --startup N`: how long `janus-ft sft` takes to reach its first optimizer step on
N synthetic records, and how much memory each process holds meanwhile.

The records are half understanding (each showing one of 2,000 small PNGs) and half text, in one
JSONL file. Each measurement is a fresh `janus-ft sft` process (or `torchrun` with 2 ranks) on the
tiny model for one epoch, stopped once step 1 is logged: wall time from launch to that line, `cold`
with no prepared-data cache, `warm` with the cache the previous run left. The
peak RSS (`VmHWM`) of every process is sampled from /proc while it runs: the training ranks, and
separately the workers `datasets.map` forks to prepare the rows. Each rank's log says whether it
prepared the rows or read them from the cache, so 2 ranks preparing twice would show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

N_IMAGES = 2000


def synthetic_records(root: Path, n: int, n_images: int = N_IMAGES, size: int = 64) -> Path:
    """`root/records-N.jsonl`: n records, even ones understanding (image i % n_images), odd ones text."""
    images = root / "images"
    if not (images / f"{n_images - 1:05d}.png").exists():
        images.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n_images):
            pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            Image.fromarray(pixels).save(images / f"{i:05d}.png")
    path = root / f"records-{n}.jsonl"
    if not path.exists():
        with path.open("w") as f:
            for i in range(n):
                if i % 2 == 0:
                    rec = {"query": f"<image>What is shown in picture {i}?", "response": f"Tile pattern {i % 977}.",
                           "images": [f"images/{(i // 2) % n_images:05d}.png"]}
                else:
                    rec = {"query": f"Question {i}: what is {i % 91} plus {i % 13}?", "response": str(i % 91 + i % 13)}
                f.write(json.dumps(rec) + "\n")
    return path


def sft_command(data: Path, out: Path, ranks: int) -> list[str]:
    """`janus-ft sft` of one step on the tiny model, on `data` (its recipe written next to `out`)."""
    import yaml

    recipe = {"model": {"path": "tiny"}, "data": {"train": [{"path": str(data)}]},
              "lora": {"r": 4, "alpha": 8},
              # One epoch: the schedule of the whole run is built, as in a real start; the run is
              # stopped once step 1 is logged.
              "train": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "logging_steps": 1,
                        "save_steps": 10**9, "disable_tqdm": True, "overwrite_output_dir": True},
              "output_dir": str(out)}
    path = out.with_name(out.name + ".yaml")
    path.write_text(yaml.safe_dump(recipe))
    launcher = [sys.executable, "-m", "janus_ft.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "janus_ft.cli"]
    return [*launcher, "sft", "--recipe", str(path)]


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; wall seconds, peak RSS of each training process and of the preparing workers, and
    what its ranks said about the prepared rows."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, tuple[int, int]] = {}   # pid -> (parent pid, VmHWM in KiB)
    log: list[str] = []
    first_step: list[float] = []

    def read():
        for line in proc.stdout:
            log.append(line)
            if line.startswith("step 1/") and not first_step:
                first_step.append(time.monotonic() - started)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        tree = _tree(proc.pid)
        for pid, parent, hwm in tree:
            peaks[pid] = (parent, max(hwm, peaks.get(pid, (0, 0))[1]))
        if first_step:
            # Every process this run started, by id: torchrun puts its ranks in sessions of their
            # own, so killing the launcher's group would leave them training (and the pipe open).
            for pid, _, _ in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.05)
    reader.join()
    text = "".join(log)
    if not first_step:
        raise RuntimeError(f"{' '.join(cmd)} ended ({proc.returncode}) before step 1:\n{text[-3000:]}")
    seconds = first_step[0]
    # Training ranks are janus_ft processes whose parent is not one; `datasets.map` workers are
    # forked from a rank (same command line, parent a janus_ft process).
    cli = {pid for pid in peaks if "janus_ft.cli" in _CMDLINES.get(pid, "")
           and "torch.distributed.run" not in _CMDLINES.get(pid, "")}
    ranks = sorted(hwm for pid, (parent, hwm) in peaks.items() if pid in cli and parent not in cli)
    workers = [hwm for pid, (parent, hwm) in peaks.items() if pid in cli and parent in cli]
    return {"seconds": round(seconds, 1), "rank_peak_rss_mb": [round(h / 1024) for h in ranks],
            "worker_peak_rss_mb": round(max(workers, default=0) / 1024),
            "prepared": len(re.findall(r"record\(s\) prepared", text)),
            "read_from_cache": len(re.findall(r"record\(s\) read from the cache", text))}


_CMDLINES: dict[int, str] = {}


def _tree(root: int) -> list[tuple[int, int, int]]:
    """(pid, parent, VmHWM KiB) of `root` and its descendants."""
    children: dict[int, list[int]] = {}
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, parent = int(entry.name), int(fields.get("PPid", "0").strip())
        children.setdefault(parent, []).append(pid)
        stats[pid] = (parent, int(fields.get("VmHWM", "0 kB").split()[0]))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            try:   # read every time: a pid is reused, and a forked child execs after its first look
                _CMDLINES[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
            out.append((pid, *stats[pid]))
        todo += children.get(pid, [])
    return out


def startup_benchmark(n: int, ranks: list[int], work: Path) -> dict:
    """Cold and warm time to the first step for each rank count, on n synthetic records."""
    from ..files import cache_root

    data = synthetic_records(work, n)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    results = []
    for r in ranks:
        for state in ("cold", "warm"):
            if state == "cold":
                shutil.rmtree(cache_root() / "prepared", ignore_errors=True)
            result = measure(sft_command(data, work / f"out-{n}-{r}", r), env)
            results.append({"records": n, "ranks": r, "cache": state, "load_before": os.getloadavg()[0], **result})
    return {"records": n, "cpus": os.cpu_count(), "runs": results}


def format_startup(report: dict) -> str:
    lines = ["| records | ranks | cache | seconds to first step | peak RSS per rank (MB) | peak RSS per worker (MB) "
             "| ranks that prepared / read the cache | load average before |", "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['records']:,} | {r['ranks']} | {r['cache']} | {r['seconds']} | "
                     f"{', '.join(map(str, r['rank_peak_rss_mb']))} | {r['worker_peak_rss_mb']} | "
                     f"{r['prepared']} / {r['read_from_cache']} | {r['load_before']:.1f} |")
    return "\n".join(lines)
