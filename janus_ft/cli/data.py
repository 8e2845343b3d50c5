"""`janus-ft data check` and `janus-ft data preview`: see what the model will learn from.

`check` validates every record of every source (JSON, fields, image files, lengths) in parallel, with
a progress bar, into the prepared-data cache training then reads, and prints counts per task; any
bad record -> exit 2, each one listed with file:line (or source:row) and field.
`preview` renders records in the Janus format with the supervised spans marked, or as JSON (`task`,
`text`, `input_ids`, `labels`); with `--recipe`, exactly as that recipe trains on them (its system
prompt, turns, length limit). Both read any source a recipe can name (`janus_ft.data.sources`), as
the records of the recipe's trainer (`--as`; a recipe with a `dpo:` or `grpo:` section is read as
preference pairs or prompts: both sides of each pair previewed, each prompt with its reward fields).
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from ..data.conversation import detect_format, render, render_text
from ..data.dataset import JanusDataset, load_records
from ..data.examples import TRAINERS, pair_sides, read_examples
from ..data.sources import DEFAULT_SEED
from ..errors import BadRecord, UserError
from ..janus import IGNORE_INDEX, TASKS

# Marks around supervised text in the human-readable preview.
OPEN, CLOSE = "\x1b[1;32m[[", "]]\x1b[0m"



def configure(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate every record; counts per task; exit 2 on bad records")
    check.add_argument("sources", nargs="*", metavar="SOURCE", help=f"{SOURCE_HELP} (or use --recipe)")
    check.add_argument("--recipe", help="check the recipe's data.train and data.val")
    check.add_argument("--model", help="checkpoint whose tokenizer measures lengths (default: the recipe's)")
    check.add_argument("--max-length", type=int, default=None, help="longest sample in tokens")
    _source_options(check)
    _trainer_option(check)
    preview = sub.add_parser("preview", help="show rendered records and supervised tokens")
    preview.add_argument("source", metavar="SOURCE", nargs="?",
                         help=SOURCE_HELP + " (default with --recipe: the recipe's data.train)")
    _source_options(preview)
    preview.add_argument("--recipe", help="render as this recipe trains: its model, format, data.system_prompt, "
                                          "data.last_turn_only and data.max_length")
    preview.add_argument("--system-prompt", default=None,
                         help="system prompt for records without one ('' for none; default: the recipe's, else "
                              "Janus's own)")
    preview.add_argument("--model", default=None,
                         help="checkpoint whose tokenizer/processor to use (default: the recipe's, else tiny)")
    preview.add_argument("--format", choices=["janus-pro", "janus"], default=None,
                         help="conversation format (default: the recipe's, else from the checkpoint)")
    preview.add_argument("--json", action="store_true", help="one JSON object per record")
    preview.add_argument("--limit", type=int, default=None, help="show at most N records")
    preview.add_argument("--no-color", action="store_true", help="mark supervised spans without colour")
    _trainer_option(preview)


def _trainer_option(parser) -> None:
    parser.add_argument("--as", dest="trainer", choices=TRAINERS, default=None,
                        help="read the records as this trainer does: sft records, dpo preference pairs, grpo "
                             "prompts (default: the recipe's trainer, else sft)")


def _trainer(args) -> str:
    from ..recipe import recipe_method

    return args.trainer or (recipe_method(args.recipe) if args.recipe else "sft")


SOURCE_HELP = ("a JSONL, Parquet, Arrow, CSV or JSON file, an imagefolder or saved-dataset directory, or a hub "
               "dataset id; SOURCE#N samples N records")


def _source_options(parser) -> None:
    """What a recipe's data source entry says besides its path (docs/data.md), for SOURCE arguments."""
    parser.add_argument("--split", help="split of a dataset source")
    parser.add_argument("--name", help="configuration of a hub dataset")
    parser.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help="read record field FIELD (query, response, images, ...) from column COLUMN")
    parser.add_argument("--query", help="the query of every record (for sources of image, text rows)")
    parser.add_argument("--response", help="the response of every record ('<image>' for image, caption rows)")


def _sources(paths: list[str], args) -> list:
    from ..recipe import check_source, parse_source

    columns = {}
    for item in args.column:
        fld, sep, column = item.partition("=")
        if not sep:
            raise UserError(f"--column {item!r}: expected FIELD=COLUMN, e.g. --column response=text")
        columns[fld] = column
    out = []
    for path in paths:
        src = parse_source({"path": path, "split": args.split, "name": args.name, "columns": columns,
                            "query": args.query, "response": args.response}, path)
        check_source(src, path)
        out.append(src)
    return out


def run(args) -> int:
    return check(args) if args.data_command == "check" else preview(args)


def _processor(model_path: str):
    from transformers import JanusProcessor

    from ..model.loading import resolve_model_path
    try:
        return JanusProcessor.from_pretrained(resolve_model_path(model_path))
    except (OSError, ValueError) as err:
        raise UserError(f"--model: cannot load a Janus processor from {model_path!r}: {err}") from None


def check(args) -> int:
    """Every record of every source validated, rendered and tokenized in parallel (`data.prepared`,
    one process per core, with a progress bar); the rows land in the cache training reads."""
    from ..data.prepared import Tokenization, errors_of, prepare, task_indices

    sources, model, max_length = _sources(args.sources, args), args.model, args.max_length
    cache_dir, seed, settings, num_proc, source_codes = None, DEFAULT_SEED, {}, None, False
    if args.recipe:
        from ..recipe import load_recipe
        recipe = load_recipe(args.recipe)
        sources += recipe.data.train + recipe.data.val
        model = model or recipe.model.path
        max_length = max_length or recipe.data.max_length
        cache_dir, seed, num_proc = recipe.data.code_cache, recipe.train.seed, recipe.data.num_proc
        source_codes = recipe.data.edit_source_codes
        settings = {"system_prompt": recipe.data.system_prompt, "last_turn_only": recipe.data.last_turn_only}
        if recipe.model.format != "auto":
            settings["fmt"] = recipe.model.format
    if not sources:
        raise UserError("data check: give sources (files, directories, hub ids) or --recipe")
    if _trainer(args) != "sft":
        return _check_examples(_trainer(args), sources, seed)
    processor = _processor(model or "tiny")   # without a model, the tiny tokenizer (lengths are not shown)
    tokenization = Tokenization(processor, settings.pop("fmt", None) or detect_format(processor), **settings)
    errors: list[BadRecord] = []
    counts, good = Counter(), []
    for src in sources:
        rows = prepare([src], seed, tokenization, num_proc, errors=errors)
        found = Counter({t: len(i) for t, i in task_indices(rows).items()}) if rows is not None else Counter()
        if len(sources) > 1:
            print(f"{src.label}: {_counts(found)}")
        if rows is not None:
            errors += errors_of(rows)
            good.append(rows)
        counts += found
    print(_counts(counts))
    if model and not errors:
        _report_lengths(good, max_length or 2048, processor.num_image_tokens if source_codes else 0)
        _report_cache(good, model, cache_dir, source_codes)
    for err in errors:   # every one: a list to fix in one pass, not fifty at a time
        print(f"bad record: {err}", file=sys.stderr)
    if errors:
        raise UserError(f"{len(errors)} bad record(s)")
    return 0


def _check_examples(trainer: str, sources, seed: int) -> int:
    """`check` for DPO pairs and GRPO prompts: every row parsed, every image decoded, counts per task."""
    errors: list[BadRecord] = []
    what = {"dpo": "pair", "grpo": "prompt"}[trainer]
    counts = Counter()
    for src in sources:
        found = Counter(item.task for item in read_examples(trainer, [src], seed, errors))
        if len(sources) > 1:
            print(f"{src.label}: {_counts(found, what)}")
        counts += found
    print(_counts(counts, what))
    for err in errors:
        print(f"bad record: {err}", file=sys.stderr)
    if errors:
        raise UserError(f"{len(errors)} bad {what}(s)")
    return 0


def _counts(counts: Counter, what: str = "record") -> str:
    return f"{sum(counts.values())} valid {what}(s): " + ", ".join(f"{t} {counts.get(t, 0)}" for t in TASKS)


def _report_lengths(parts, max_length: int, code_block: int = 0) -> None:
    """Lengths as training counts them: with `code_block` (image tokens, when data.edit_source_codes),
    each edit source's code block too."""
    import numpy as np

    from ..data.edit import EditSettings
    from ..data.prepared import lengths_of, record_of, task_indices

    lengths, first = [], None
    for rows in parts:
        tasks = task_indices(rows)
        good = np.sort(np.concatenate(list(tasks.values())))
        all_lengths = lengths_of(rows)
        if code_block and len(tasks["edit"]):
            all_lengths[tasks["edit"]] += [EditSettings(source_codes=True).extra_tokens(len(paths) - 1, code_block)
                                           for paths in rows.select(tasks["edit"])["images"]]
        found = all_lengths[good]
        lengths.append(found)
        if first is None and (found > max_length).any():
            first = record_of(rows[int(good[np.argmax(found > max_length)])])
    lengths = np.sort(np.concatenate(lengths)) if lengths else np.empty(0)
    if len(lengths):
        print(f"lengths after image expansion: min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
              f"max {lengths[-1]} tokens")
    dropped = int((lengths > max_length).sum())
    if dropped:
        print(f"{dropped} record(s) longer than {max_length} tokens will be dropped, not truncated "
              f"(first: {first.source}:{first.line})")


def _report_cache(parts, model_path: str, cache_dir, source_codes: bool = False) -> None:
    """How many generation / edit images already have VQ codes cached (no encoder passes here)."""
    from ..data.dataset import coded_images
    from ..data.prepared import task_indices

    images = {task: [paths for rows in parts for paths in rows.select(task_indices(rows)[task])["images"]]
              for task in ("generation", "edit")}
    gen = sorted(set(coded_images(images, source_codes)))
    if not gen:
        return
    import hashlib
    from pathlib import Path

    from transformers import JanusForConditionalGeneration

    from ..data.vq import CacheKey, CodeCache, generation_image_size, vq_fingerprint
    from ..model.loading import resolve_model_path

    model = JanusForConditionalGeneration.from_pretrained(resolve_model_path(model_path))
    cache, fingerprint, size = CodeCache(cache_dir), vq_fingerprint(model), generation_image_size(model)
    hits = sum(cache.get(CacheKey(hashlib.sha256(Path(p).read_bytes()).hexdigest(), fingerprint, size))
               is not None for p in gen)
    # "generation image(s)": every image the VQ path encodes, edit targets and sources included
    print(f"VQ code cache: {hits} of {len(gen)} generation image(s) cached, {len(gen) - hits} to encode")


def preview(args) -> int:
    view = preview_settings(args)
    processor = _processor(view["model"])
    fmt = view["format"] or detect_format(processor)
    trainer = _trainer(args)
    if trainer == "grpo":
        return _preview_prompts(args, view, processor, fmt)
    if trainer == "dpo":   # both sides of each pair, as DPO scores them
        sides = pair_sides(_read_examples("dpo", view)[: args.limit])
        side_of, records = {id(r): side for side, r in sides}, [r for _, r in sides]
    else:
        side_of, records = {}, load_records(view["sources"], seed=view["seed"])[: args.limit]
    ds = JanusDataset(records, processor, fmt, view["max_length"], view["system_prompt"], view["last_turn_only"],
                      edit=view["edit"])
    tok = processor.tokenizer
    for ex in ds.examples:
        text = render_text(render(ex.record, fmt, view["system_prompt"], view["last_turn_only"]))
        side = side_of.get(id(ex.record))
        ids, labels, codes = _layout(ex, ds)
        if args.json:
            print(json.dumps({"task": ex.record.task, "line": ex.record.line, **({"side": side} if side else {}),
                              "text": text, "input_ids": ids, "labels": labels,
                              **({"source_codes": codes} if codes else {})}, ensure_ascii=False))
        else:
            marks = ("[[", "]]") if args.no_color or not sys.stdout.isatty() else (OPEN, CLOSE)
            print(f"--- {ex.record.source}:{ex.record.line} ({ex.record.task}{', ' + side if side else ''}, "
                  f"{len(ids)} tokens, {sum(x != IGNORE_INDEX for x in labels)} supervised)")
            print(marked_text(tok, ids, labels, ds.special, marks, codes))
    for record in ds.dropped:   # training drops them too: never shown as if they trained
        print(f"--- {record.source}:{record.line} ({record.task}) dropped: longer than data.max_length="
              f"{view['max_length']} tokens", file=sys.stderr)
    return 0


def _layout(ex, ds) -> tuple[list[int], list[int], list[int] | None]:
    """(ids, labels, source codes) of a sample as training lays it out: an edit trained with
    data.edit_source_codes gets its code blocks (placeholder codes 0, as targets have without a model)."""
    if ex.record.task != "edit" or not ds.edit.source_codes:
        return ex.input_ids, ex.labels, None
    from ..data.edit import insert_source_codes

    blank = [[0] * ds.num_image_tokens] * len(ex.record.sources)
    return insert_source_codes(ex.input_ids, ex.labels, ds.special, blank)


def _read_examples(trainer: str, view: dict) -> list:
    errors: list[BadRecord] = []
    items = read_examples(trainer, view["sources"], view["seed"], errors)
    if errors:   # the first one, as training would stop on it (`data check` lists them all)
        raise errors[0]
    return items


def _preview_prompts(args, view: dict, processor, fmt: str) -> int:
    """GRPO prompts: the ids the policy samples from (text / understanding: up to the last `{R_a}:`;
    generation: up to `<begin_of_image>`), and the fields the rewards receive."""
    from ..infer.generate import prompt_inputs
    from ..infer.prompts import record_prompt_ids
    from ..janus import SpecialIds

    special = SpecialIds.from_tokenizer(processor.tokenizer)
    for prompt in _read_examples("grpo", view)[: args.limit]:
        record = prompt.record
        ids = (prompt_inputs(processor, record.caption, fmt)["input_ids"][0].tolist() if record.task == "generation"
               else record_prompt_ids(processor, record, fmt, view["system_prompt"]))
        text = processor.tokenizer.decode(ids, skip_special_tokens=False)
        if args.json:
            print(json.dumps({"task": record.task, "line": record.line, "text": text, "input_ids": ids,
                              "fields": prompt.fields}, ensure_ascii=False, default=str))
        else:
            print(f"--- {record.source}:{record.line} ({record.task} prompt, {len(ids)} tokens)")
            print(marked_text(processor.tokenizer, ids, [IGNORE_INDEX] * len(ids), special))
            if prompt.fields:
                print(f"reward fields: {json.dumps(prompt.fields, ensure_ascii=False, default=str)}")
    return 0


def preview_settings(args) -> dict:
    """What `preview` renders with: the command line first, then the recipe, then the defaults
    `janus-ft sft` would use, so the preview shows what that recipe trains on (system prompt
    included), not a default rendering of the same records."""
    from ..data.edit import EditSettings

    view = {"sources": _sources([args.source], args) if args.source else [], "model": "tiny", "format": None,
            "system_prompt": None, "last_turn_only": False, "max_length": 10**9, "seed": DEFAULT_SEED,
            "edit": EditSettings()}
    if args.recipe:
        from ..recipe import load_recipe

        recipe = load_recipe(args.recipe)
        d = recipe.data
        view.update(sources=view["sources"] or d.train, model=recipe.model.path, seed=recipe.train.seed,
                    format=None if recipe.model.format == "auto" else recipe.model.format,
                    system_prompt=d.system_prompt, last_turn_only=d.last_turn_only, max_length=d.max_length,
                    edit=EditSettings.from_data(d))
    if not view["sources"]:
        raise UserError("data preview: give a SOURCE or --recipe")
    overrides = {"model": args.model, "format": args.format, "system_prompt": args.system_prompt}
    view.update({k: v for k, v in overrides.items() if v is not None})
    return view


def marked_text(tok, ids, labels, special, marks=("[[", "]]"), source_codes=None) -> str:
    """Decoded ids with supervised runs wrapped in marks and image runs abbreviated (an edit's
    source code blocks, where `source_codes` holds a code, named as such)."""
    out, run, supervised = [], [], False

    def flush():
        if run:
            text = tok.decode(run, skip_special_tokens=False)
            out.append(f"{marks[0]}{text}{marks[1]}" if supervised else text)
            run.clear()

    i = 0
    while i < len(ids):
        if ids[i] == special.image:
            j = i
            while j < len(ids) and ids[j] == special.image:
                j += 1
            flush()
            target = labels[i] != IGNORE_INDEX
            coded = source_codes is not None and source_codes[i] != IGNORE_INDEX
            label = f"<image_placeholder>x{j - i}" + (" (source codes)" if coded else "")
            out.append(f"{marks[0]}{label} (image codes){marks[1]}" if target else label)
            i = j
            continue
        sup = labels[i] != IGNORE_INDEX
        if sup != supervised:
            flush()
            supervised = sup
        run.append(ids[i])
        i += 1
    flush()
    return "".join(out)
