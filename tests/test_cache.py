"""`janus-ft cache ls | prune` (data/cache.py, files.hold / claim): entries made by real runs are
listed with kind, size, age and last use; prune removes what no run used for N days, never an entry
a running process reads, and a pruned entry is rebuilt by the next run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from janus_ft.cli import main
from janus_ft.data.cache import cache_entries
from janus_ft.files import IN_USE, claim, hold

SAMPLES = Path(__file__).resolve().parent.parent / "data_templates" / "samples"
# A running job in miniature: prepare one source's rows and encode one image's VQ codes, then keep
# reading the rows for a while, as training does.
READER = """
import sys, time
from accelerate import PartialState
from transformers import JanusForConditionalGeneration, JanusProcessor
from janus_ft.data.prepared import Tokenization, prepare_source
from janus_ft.data.vq import codes_for_files
from janus_ft.recipe import parse_source
tiny, source, image = sys.argv[1:4]
PartialState()
rows = prepare_source(parse_source({"path": source}, "x"), 0, Tokenization(JanusProcessor.from_pretrained(tiny), "janus-pro"))
codes_for_files(JanusForConditionalGeneration.from_pretrained(tiny), [image])
print("ready", len(rows), flush=True)
time.sleep(120)
print("read", sum(len(ids) for ids in rows["input_ids"]), flush=True)
"""
IMAGE = SAMPLES / "images/shape_0001.png"


def a_run(tiny_base, source):
    """What a run leaves in the cache (this process's holds released, as when a run ends)."""
    from accelerate import PartialState

    from janus_ft import files
    from janus_ft.data.prepared import Tokenization, prepare_source
    from janus_ft.data.vq import codes_for_files
    from janus_ft.recipe import parse_source

    PartialState()
    model, processor = tiny_base
    prepare_source(parse_source({"path": str(source)}, "x"), 0, Tokenization(processor, "janus-pro"))
    codes_for_files(model, [IMAGE])
    while files._HELD:
        os.close(files._HELD.popitem()[1])


def ls(cache, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["cache", "ls", "--root", str(cache), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def age(entry: Path, days: float) -> None:
    """Make an entry look last used (and built) `days` ago."""
    stamp = time.time() - days * 86400
    for p in [entry, *entry.rglob("*")]:
        os.utime(p, (stamp, stamp))


def test_ls_and_prune_respect_use_and_running_readers(tiny_dir, tiny_base, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("JANUS_FT_CACHE", str(cache))
    old_source, new_source = SAMPLES / "text.jsonl", SAMPLES / "understanding_val.jsonl"
    a_run(tiny_base, old_source)
    listed = ls(cache, capsys)
    assert [e["kind"] for e in listed] == ["prepared", "vq-codes"]
    prepared, codes = (Path(e["path"]) for e in listed)
    assert listed[0]["detail"].endswith("text.jsonl") and listed[1]["detail"] == "1 images"
    assert listed[0]["size"] == sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file() and p.name != IN_USE)
    assert all(0 <= e["age_days"] < 0.01 and 0 <= e["last_used_days"] < 0.01 for e in listed)

    age(prepared, 40)
    age(codes, 40)
    assert [round(e["last_used_days"]) for e in ls(cache, capsys)] == [40, 40]
    assert main(["cache", "prune", "--root", str(cache), "--older-than", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 2 entries" in out and prepared.is_dir() and codes.is_dir()
    # A job starts reading the old VQ codes and another source: it holds both while it runs.
    env = {**os.environ, "JANUS_FT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tiny_dir), str(new_source), str(IMAGE)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert reader.stdout.readline().startswith("ready")
        age(codes, 40)   # however old it looks, a held entry stays
        assert main(["cache", "prune", "--root", str(cache), "--older-than", "30"]) == 0
        out = capsys.readouterr().out
        assert not prepared.exists() and codes.is_dir()
        assert f"kept {codes.relative_to(cache)}: a running process reads it" in out and "removed 1 entry" in out
        assert main(["cache", "prune", "--root", str(cache), "--older-than", "0", "--kind", "prepared"]) == 0
        assert "kept prepared/" in capsys.readouterr().out   # the job's own rows, new but held
    finally:
        reader.kill()
        reader.wait()
    assert main(["cache", "prune", "--root", str(cache), "--older-than", "30"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not codes.exists()
    a_run(tiny_base, old_source)   # the next run rebuilds what was pruned
    assert (prepared / "meta.json").is_file() and len(list(codes.rglob("*.npy"))) == 1


def test_hold_and_claim(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "rows.arrow").write_bytes(b"x" * 10)
    before = time.time() - 5
    os.utime(entry / "rows.arrow", (before, before))
    assert hold(entry) and not claim(entry) and entry.is_dir()   # held (through another descriptor)
    assert cache_entries(tmp_path) == []   # not under a cache folder: nothing listed
    from janus_ft import files
    os.close(files._HELD.pop(str(entry)))   # as if this process had ended
    assert claim(entry) and not entry.exists()
    assert not hold(entry)                      # gone: the reader builds it again
    assert hold(entry, create=True) and entry.is_dir()


@pytest.mark.parametrize("argv, message", [
    (["cache", "prune", "--older-than", "-1"], "--older-than must be >= 0"),
    (["cache", "ls", "--root", "/no/such/dir"], "--root /no/such/dir: no such directory"),
])
def test_mistakes_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
