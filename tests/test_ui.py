"""`janus-ft ui` in a real headless browser (Debian's chromium driven by Playwright) against the
page served on the tiny model: chat with an image (streamed, and the same answer as `janus-ft chat`),
N generated images (the same pixels as `janus-ft generate`), side by side (base and adapters on one
loaded base give different answers), the runs tab (curve, metrics, grids of a real sft run), and
errors shown on the page while the server keeps serving. One server and one browser for the module;
screenshots go to test-artifacts/ui/ (JANUS_FT_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need, random_adapter
from PIL import Image

from janus_ft.cli import main
from janus_ft.errors import UserError

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "data_templates" / "samples" / "images" / "shape_0049.png"
QUESTION = "What colour is the shape?"
ARTIFACTS = Path(os.environ.get("JANUS_FT_TEST_ARTIFACTS") or REPO / "test-artifacts") / "ui"
CHROMIUM = "/usr/bin/chromium"
SHORT_RUN = ["train.max_steps=4", "train.eval_steps=2", "train.save_steps=4", "train.logging_steps=1",
             "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1", "train.disable_tqdm=true"]


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def demo_run(tiny_dir, tmp_path_factory) -> Path:
    """A short demo run (4 steps, evaluated at 0, 2 and 4): trainer state, grids, mixture, recipe, adapter."""
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), *SHORT_RUN, f"model.path={tiny_dir}",
                 f"output_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def differ(tiny_dir, tmp_path_factory) -> Path:
    """A real PEFT adapter on disk whose (random, non-zero) weights make its answers differ from the base's."""
    return random_adapter(tiny_dir, ["llm", "aligner"], tmp_path_factory.mktemp("adapters") / "differ", seed=3)


@pytest.fixture(scope="module")
def server(tiny_dir, demo_run, differ):
    need("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from janus_ft.ui.app import build_app
    from janus_ft.ui.session import Workbench

    bench = Workbench(str(tiny_dir))
    assert [bench.add_adapter(demo_run), bench.add_adapter(differ)] == ["demo", "differ"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(bench, demo_run.parent)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    yield f"http://127.0.0.1:{port}/", bench
    app.close()


@pytest.fixture(scope="module")
def page(server):
    """One headless chromium page on the served app (Debian's browser; Playwright never downloads one)."""
    sync_api = need("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(90_000)
        tab.goto(server[0])
        tab.wait_for_selector("#chat-send")
        yield tab
        browser.close()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def set_number(page, selector: str, value) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def gallery_images(page, selector: str, n: int) -> list[Image.Image]:
    """The n images a gallery shows, fetched from the server as the browser fetched them."""
    page.wait_for_function(f"document.querySelectorAll('{selector} .grid-wrap img').length === {n}")
    sources = page.eval_on_selector_all(f"{selector} .grid-wrap img", "els => els.map(e => e.src)")
    return [Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB") for src in sources]


def table_rows(page, selector: str, n: int) -> list[list[str]]:
    """The cells of a (virtualised) Gradio table, once it shows n rows."""
    page.wait_for_function(f"document.querySelectorAll('{selector} .virtual-row').length === {n}")
    return page.eval_on_selector_all(f"{selector} .virtual-row", "rows => rows.map(r => Array.from("
                                     "r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))")


def test_chat_with_an_image_streams_the_answer_janus_ft_chat_gives(page, tiny_dir, differ, capsys):
    capsys.readouterr()
    assert main(["chat", "--model", str(tiny_dir), "--adapter", str(differ), "--image", str(IMAGE),
                 "--prompt", QUESTION, "--max-new-tokens", "32", "--no-stream"]) == 0
    expected = capsys.readouterr().out.strip()
    assert expected

    open_tab(page, "Chat")
    page.locator("#chat-model input").fill("differ")
    page.locator("#chat-model input").press("Enter")
    set_number(page, "#chat-max-new", 32)
    page.locator("#chat-image input[type=file]").set_input_files(str(IMAGE))
    page.fill("#chat-message textarea", QUESTION)
    # Every text the answer bubble shows while it is written: more than one means it streamed.
    page.evaluate("""() => { window.seen = new Set();
        new MutationObserver(() => { const bots = document.querySelectorAll('#chat-log [data-testid=bot]');
            if (bots.length) window.seen.add(bots[bots.length - 1].innerText); })
        .observe(document.querySelector('#chat-log'), {subtree: true, childList: true, characterData: true}); }""")
    page.click("#chat-send")
    bot = page.locator("#chat-log [data-testid=bot]").last
    page.wait_for_function("(n) => { const b = document.querySelectorAll('#chat-log [data-testid=bot]');"
                           " return b.length && b[b.length - 1].innerText.split(/\\s+/).join(' ').trim() === n; }",
                           arg=words(expected))
    assert words(bot.inner_text()) == words(expected)
    assert page.locator("#chat-log [data-testid=user] img").count() == 1      # the uploaded image is shown
    assert page.evaluate("window.seen.size") > 1
    page.screenshot(path=str(ARTIFACTS / "chat.png"))


def test_generate_shows_n_images_equal_to_janus_ft_generate(page, tiny_dir, differ, tmp_path):
    caption, n, seed = "a red circle on a blue background", 3, 7
    assert main(["generate", "--model", str(tiny_dir), "--adapter", str(differ), "--prompt", caption,
                 "--n", str(n), "--seed", str(seed), "--output", str(tmp_path)]) == 0

    open_tab(page, "Text to image")
    page.fill("#gen-caption textarea", caption)
    set_number(page, "#gen-n", n)
    set_number(page, "#gen-seed", seed)
    page.click("#gen-go")
    shown = gallery_images(page, "#gen-gallery", n)
    page.screenshot(path=str(ARTIFACTS / "generate.png"))
    for i, image in enumerate(shown):
        assert list(image.getdata()) == list(Image.open(tmp_path / f"{i}.png").convert("RGB").getdata()), i


def test_an_uploaded_source_image_is_edited_as_janus_ft_generate_image_edits_it(page, tiny_dir, differ, tmp_path):
    instruction, n, seed = "Make the shape red.", 2, 5
    assert main(["generate", "--model", str(tiny_dir), "--adapter", str(differ), "--image", str(IMAGE),
                 "--prompt", instruction, "--n", str(n), "--seed", str(seed), "--output", str(tmp_path)]) == 0

    open_tab(page, "Text to image")
    page.locator("#gen-sources input[type=file]").set_input_files(str(IMAGE))
    page.fill("#gen-caption textarea", instruction)
    set_number(page, "#gen-n", n)
    set_number(page, "#gen-seed", seed)
    page.click("#gen-go")
    shown = gallery_images(page, "#gen-gallery", n)
    page.screenshot(path=str(ARTIFACTS / "edit.png"))
    for i, image in enumerate(shown):
        assert list(image.getdata()) == list(Image.open(tmp_path / f"{i}.png").convert("RGB").getdata()), i


def test_side_by_side_base_and_adapters_answer_differently_on_one_base(page, server, tiny_base):
    from janus_ft.infer.chat import Decoding, answer
    from janus_ft.infer.prompts import prompt_record, resolve_format

    open_tab(page, "Side by side")
    page.fill("#sbs-prompt textarea", "Describe a blue square.")
    page.click("#sbs-answer")
    rows = table_rows(page, "#sbs-answers", 3)
    answers = {row[0].strip(): words(row[1]) for row in rows}
    assert set(answers) == {"base", "demo", "differ"}
    assert answers["base"] != answers["differ"]
    # The base is the same model with its adapters switched off: the plain model's answer.
    model, processor = tiny_base
    record = prompt_record("Describe a blue square.")
    assert answers["base"] == words(answer(model, processor, record, resolve_format(processor, None),
                                           Decoding(max_new_tokens=64, seed=0)))
    bench = server[1]
    assert sum(1 for name, _ in bench.model.named_modules() if name.endswith("lora_A")) > 0
    assert set(bench.model.peft_config) == {"demo", "differ"}   # two adapters on one base, not copies
    page.click("#sbs-draw")
    assert len(gallery_images(page, "#sbs-gallery", 6)) == 6   # two drawings per model
    page.screenshot(path=str(ARTIFACTS / "side_by_side.png"))


def test_runs_tab_shows_the_demo_runs_curve_metrics_and_grids(page, demo_run):
    open_tab(page, "Runs")
    steps = sorted(int(re.search(r"\d+", p.stem).group()) for p in (demo_run / "samples").glob("step-*.png"))
    assert steps == [0, 2, 4]
    page.wait_for_selector("#run-loss img")
    grids = gallery_images(page, "#run-samples", len(steps))
    assert all(g.size == Image.open(demo_run / "samples/step-0.png").size for g in grids)
    captions = page.eval_on_selector_all("#run-samples .grid-wrap .caption-label", "els => els.map(e => e.innerText)")
    assert captions == [f"step {s}" for s in steps]
    headers = page.eval_on_selector_all("#run-metrics th[role=columnheader]", "els => els.map(e => e.innerText.trim())")
    assert "loss_understanding" in headers and headers[0] == "step"
    assert [row[0] for row in table_rows(page, "#run-metrics", 3)] == ["0", "2", "4"]   # evaluations at 0, 2, 4
    assert "quantization: none" in page.inner_text("#run-recipe")   # the recipe as saved (model section first)
    loss = page.eval_on_selector("#run-loss img", "e => e.src")
    assert Image.open(io.BytesIO(page.request.get(loss).body())).size == (700, 400)   # plot_losses' figure
    page.screenshot(path=str(ARTIFACTS / "runs.png"), full_page=True)


def test_errors_show_on_the_page_and_the_server_keeps_serving(page, server, differ, tmp_path):
    open_tab(page, "Side by side")
    page.fill("#sbs-adapter-path textarea", str(tmp_path / "no-such-adapter"))
    page.click("#sbs-adapter-load")
    page.get_by_text("no such directory").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "error.png"))
    page.fill("#sbs-adapter-path textarea", str(differ))          # a real one loads from the page
    page.click("#sbs-adapter-load")
    page.locator("#sbs-models").get_by_text("differ-2").wait_for()
    assert server[1].names == ["base", "demo", "differ", "differ-2"]
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    page.locator("#sbs-image input[type=file]").set_input_files(str(bad))
    page.fill("#sbs-prompt textarea", "What is this?")
    page.click("#sbs-answer")
    page.get_by_text("not-an-image.png").first.wait_for()     # the error names the upload
    page.screenshot(path=str(ARTIFACTS / "error-upload.png"))
    open_tab(page, "Chat")                                    # and the server still answers
    page.click("#chat-clear")
    page.fill("#chat-message textarea", "Hello?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-log [data-testid=bot]")
    assert page.inner_text("#chat-log [data-testid=bot]").strip()


def test_sampled_answers_equal_janus_ft_chat_with_the_same_seed(server, tiny_dir, demo_run, capsys):
    """What the chat tab streams, last value, for a sampled answer with a system prompt: the CLI's answer."""
    from janus_ft.infer.chat import Decoding

    bench, system = server[1], "Answer in one word."
    record = bench.record(QUESTION, [str(IMAGE)], system)
    shown = list(bench.stream("demo", record, Decoding(24, 0.9, 0.95, 5, system)))[-1]
    capsys.readouterr()
    assert main(["chat", "--model", str(tiny_dir), "--adapter", str(demo_run), "--image", str(IMAGE), "--prompt", QUESTION,
                 "--system", system, "--max-new-tokens", "24", "--temperature", "0.9", "--top-p", "0.95",
                 "--seed", "5", "--no-stream"]) == 0
    assert shown == capsys.readouterr().out.strip() and shown


def test_drawing_greedy_or_unguided(server, tiny_dir, tmp_path):
    """Guidance 1 (the caption alone) draws what `janus-ft generate --cfg 1` draws; greedy with
    several images is refused, as the CLI refuses it, instead of drawing one image n times."""
    bench = server[1]
    images = bench.draw("base", "a red square", 2, 1.0, 1.0, 3)
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a red square", "--output", str(tmp_path),
                 "--n", "2", "--cfg", "1", "--seed", "3"]) == 0
    for i, image in enumerate(images):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / f"{i}.png")))
    with pytest.raises(UserError, match="temperature 0 is greedy"):
        bench.draw("base", "a red square", 2, 5.0, 0.0, 0)


def test_page_errors_translate_user_errors_and_out_of_memory():
    gr = need("gradio")
    from janus_ft.ui.app import history_pairs, shown

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def bad():
        raise UserError("adapter x: no such directory")

    with pytest.raises(gr.Error, match="out of memory: try fewer images"):
        shown(oom)()
    with pytest.raises(gr.Error, match="no such directory"):
        list(shown(lambda: (yield bad()))())
    with pytest.raises(ZeroDivisionError):   # a bug stays a bug (Gradio reports it, the server serves on)
        shown(lambda: 1 / 0)()
    messages = [{"role": "user", "content": {"path": "x.png"}}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert history_pairs(messages) == [("q1", "a1")]


def test_read_run_and_find_runs(demo_run, tmp_path):
    from janus_ft.ui.runs import find_runs, read_run

    assert find_runs(demo_run.parent) == [demo_run]
    assert find_runs(demo_run) == [demo_run]
    view = read_run(demo_run)
    assert [row["step"] for row in view.metrics] == [0, 2, 4]
    assert view.mixture["steps"] == 4 and "lora:" in view.recipe
    with pytest.raises(UserError, match="no trainer_state.json"):
        read_run(tmp_path)
    (tmp_path / "trainer_state.json").write_text("{oops")
    with pytest.raises(UserError, match="not a trainer state"):
        read_run(tmp_path)


def test_cli_checks_its_arguments_before_loading(tmp_path, capsys):
    need("gradio")
    assert main(["ui", "--model", "tiny", "--runs", str(tmp_path / "missing")]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main(["ui", "--model", "tiny", "--port", "0"]) == 2


def test_a_missing_adapter_fails_with_a_clear_error(tiny_dir, tmp_path):
    need("gradio")
    from janus_ft.ui.session import Workbench

    bench = Workbench(str(tiny_dir))
    with pytest.raises(UserError, match="no such directory"):
        bench.add_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a PEFT adapter"):
        bench.add_adapter(tmp_path / "empty")
    assert bench.names == ["base"]
    shutil.rmtree(tmp_path / "empty")


def test_janus_ft_ui_serves_the_page(tiny_dir, differ, demo_run):
    """The command itself: it loads the base and adapters and serves the page on the given port."""
    import subprocess
    import sys
    import time
    import urllib.request

    need("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "janus_ft.cli", "ui", "--model", str(tiny_dir), "--adapter", str(differ),
                             "--runs", str(demo_run.parent), "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, config = time.monotonic() + 120, None
        while config is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert config is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 120 s"
        assert "differ" in config and "Side by side" in config and str(demo_run) in config
    finally:
        proc.terminate()
        proc.wait(timeout=30)
