"""The page: four tabs over one `Workbench` (chat, text-to-image, side by side, runs), in Gradio.

Handlers only turn widget values into library calls and results into widget values. A user error
(a bad upload, an adapter directory that is not one, a run directory without a trainer state) or
an out-of-memory error becomes a `gr.Error`, which the page shows; the server keeps serving.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..infer.chat import Decoding
from ..janus import CFG_SCALE, DEFAULT_SYSTEM_PROMPT
from .runs import STATE, find_runs, loss_plot, metrics_table, read_run
from .session import Workbench, out_of_memory_message


def shown(fn):
    """Errors a user can act on, raised as `gr.Error` so the page shows them (generators too)."""
    import gradio as gr

    def translate(err: BaseException):
        if isinstance(err, UserError):
            return gr.Error(str(err), duration=None, print_exception=False)
        message = out_of_memory_message(err)
        return gr.Error(message, duration=None) if message else None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args):
            try:
                yield from fn(*args)
            except Exception as err:
                raise (translate(err) or err) from None
        return stream

    @functools.wraps(fn)
    def call(*args):
        try:
            return fn(*args)
        except Exception as err:
            raise (translate(err) or err) from None
    return call


def decoding(max_new_tokens, temperature, top_p, seed, system) -> Decoding:
    if int(max_new_tokens) < 1:
        raise UserError(f"max new tokens must be >= 1, got {max_new_tokens}")
    return Decoding(int(max_new_tokens), float(temperature), float(top_p),
                    None if seed is None else int(seed), system)


def history_pairs(messages: list[dict]) -> list[tuple[str, str]]:
    """(question, answer) text pairs of the conversation so far (image messages left out)."""
    pairs, question = [], None
    for message in messages:
        if not isinstance(message.get("content"), str):
            continue
        if message["role"] == "user":
            question = message["content"]
        elif question is not None:
            pairs.append((question, message["content"]))
            question = None
    return pairs


def build_app(bench: Workbench, runs_root: str | Path | None = None):
    """The page: one tab per job, the model pickers of every tab kept in step with loaded adapters."""
    import gradio as gr

    with gr.Blocks(title="janus-ft") as app:
        gr.Markdown(f"## janus-ft · `{bench.model_path}` with adapters: {', '.join(bench.adapters) or 'none'}")
        with gr.Tab("Chat"):
            chat_model = chat_tab(bench)
        with gr.Tab("Text to image"):
            gen_model = generate_tab(bench)
        with gr.Tab("Side by side"):
            side_by_side_tab(bench, [chat_model, gen_model])
        with gr.Tab("Runs"):
            runs_tab(app, run_choices(bench, runs_root))
    return app


def run_choices(bench: Workbench, runs_root) -> list[str]:
    """The runs under --runs, then the adapters that are run directories themselves."""
    found = [*find_runs(runs_root), *bench.adapters.values()]
    return list(dict.fromkeys(str(p) for p in found if (Path(p) / STATE).is_file()))


def chat_tab(bench: Workbench):
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="conversation", elem_id="chat-log", render_markdown=False, feedback_options=None)
            message = gr.Textbox(label="message", elem_id="chat-message", placeholder="Ask about the image")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                clear = gr.Button("Clear", elem_id="chat-clear")
        with gr.Column(scale=2):
            model = gr.Dropdown(bench.names, value=bench.names[-1], label="model", elem_id="chat-model")
            image = gr.File(label="image", file_types=["image"], elem_id="chat-image", height=120)
            system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="system prompt", lines=3)
            max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens", elem_id="chat-max-new")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
            seed = gr.Number(0, precision=0, label="seed")

    @shown
    def chat(text, image, messages, system, name, max_new, temperature, top_p, seed):
        record = bench.record(text, [image] if image else [], system, history_pairs(messages))
        messages = list(messages) + ([{"role": "user", "content": gr.Image(image)}] if image else [])
        messages += [{"role": "user", "content": text}]
        for partial in bench.stream(name, record, decoding(max_new, temperature, top_p, seed, system)):
            yield messages + [{"role": "assistant", "content": partial}], ""

    inputs = [message, image, chatbot, system, model, max_new, temperature, top_p, seed]
    send.click(chat, inputs, [chatbot, message])
    message.submit(chat, inputs, [chatbot, message])
    clear.click(lambda: [], None, chatbot)
    return model


def generate_tab(bench: Workbench):
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=2):
            caption = gr.Textbox(label="caption (with source images: the edit instruction)", elem_id="gen-caption")
            sources = gr.File(label="source image(s) to edit (optional)", file_count="multiple", file_types=["image"],
                              type="filepath", elem_id="gen-sources")
            model = gr.Dropdown(bench.names, value=bench.names[-1], label="model")
            n_images = gr.Slider(1, 16, value=4, step=1, label="images", elem_id="gen-n")
            cfg = gr.Slider(1, 10, value=CFG_SCALE, step=0.5, label="CFG scale")
            temperature = gr.Slider(0, 2, value=1, step=0.05, label="temperature (0 = greedy)")
            image_cfg = gr.Slider(0, 5, value=1, step=0.25, label="edit: guidance towards the sources (1 = none)")
            seed = gr.Number(0, precision=0, label="seed", elem_id="gen-seed")
            draw = gr.Button("Generate", variant="primary", elem_id="gen-go")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="images", format="png", columns=4, elem_id="gen-gallery")

    @shown
    def generate(caption, sources, name, n, cfg, temperature, image_cfg, seed):
        images = bench.draw(name, caption, int(n), float(cfg), float(temperature), int(seed or 0),
                            images=list(sources or []), image_cfg=float(image_cfg))
        return [(im, f"{name} #{i}") for i, im in enumerate(images)]

    draw.click(generate, [caption, sources, model, n_images, cfg, temperature, image_cfg, seed], gallery)
    return model


def side_by_side_tab(bench: Workbench, pickers: list) -> None:
    """The same prompt, greedy answers or drawings with one seed, from each ticked model."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=2):
            compared = gr.CheckboxGroup(bench.names, value=bench.names, label="models", elem_id="sbs-models")
            prompt = gr.Textbox(label="prompt (a question, or a caption to draw)", elem_id="sbs-prompt")
            image = gr.File(label="image (for questions)", file_types=["image"], height=120, elem_id="sbs-image")
            with gr.Row():
                max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens", elem_id="sbs-max-new")
                seed = gr.Number(0, precision=0, label="seed (the same for every model)")
            with gr.Row():
                ask = gr.Button("Answer", variant="primary", elem_id="sbs-answer")
                paint = gr.Button("Draw", elem_id="sbs-draw")
            with gr.Row():
                new_adapter = gr.Textbox(label="load another adapter (directory)", elem_id="sbs-adapter-path")
                add = gr.Button("Load adapter", elem_id="sbs-adapter-load")
        with gr.Column(scale=3):
            answers = gr.Dataframe(headers=["model", "answer"], label="answers", elem_id="sbs-answers",
                                   interactive=False, wrap=True)
            drawings = gr.Gallery(label="drawings (two per model)", format="png", columns=4, elem_id="sbs-gallery")

    @shown
    def answer_all(names, text, image, max_new, seed):
        settings = decoding(max_new, 0.0, 1.0, seed, None)
        record = bench.record(text, [image] if image else [], None)
        return [[name, bench.answer(name, record, settings)] for name in ticked(names)]

    @shown
    def draw_all(names, text, seed):
        return [(im, f"{name} #{i}") for name in ticked(names)
                for i, im in enumerate(bench.draw(name, text, 2, CFG_SCALE, 1.0, int(seed or 0)))]

    @shown
    def load_adapter(path, names):
        name = bench.add_adapter(path)
        picker = gr.update(choices=bench.names)
        return (gr.update(choices=bench.names, value=[*names, name]), *[picker] * len(pickers), "")

    ask.click(answer_all, [compared, prompt, image, max_new, seed], answers)
    paint.click(draw_all, [compared, prompt, seed], drawings)
    add.click(load_adapter, [new_adapter, compared], [compared, *pickers, new_adapter])


def ticked(names: list[str]) -> list[str]:
    if not names:
        raise UserError("tick at least one model to compare")
    return names


def runs_tab(app, choices: list[str]) -> None:
    import gradio as gr
    import pandas as pd

    plots = Path(tempfile.mkdtemp(prefix="janus-ft-ui-"))
    with gr.Row():
        run_dir = gr.Dropdown(choices, value=choices[0] if choices else None, label="run directory",
                              allow_custom_value=True, elem_id="run-dir", scale=4)
        show = gr.Button("Show", variant="primary", elem_id="run-show", scale=1)
    with gr.Row():
        curve = gr.Image(label="loss per task (train solid, validation dashed)", elem_id="run-loss", type="pil")
        metrics = gr.Dataframe(label="evaluation during training", elem_id="run-metrics", interactive=False)
    samples = gr.Gallery(label="samples over steps (samples/step-N.png)", format="png", columns=4, elem_id="run-samples")
    with gr.Row():
        mixture = gr.JSON(label="mixture.json (samples consumed per task)")
        report = gr.JSON(label="eval/eval.json (janus-ft eval)")
    recipe = gr.Code(label="recipe.yaml", language="yaml", elem_id="run-recipe")

    @shown
    def show_run(path):
        if not path:
            raise UserError("pick or type a run directory (the output_dir of janus-ft sft)")
        view = read_run(path)
        plot = loss_plot(view, plots)
        headers, rows = metrics_table(view.metrics)
        grids = [(Image.open(p).convert("RGB"), f"step {step}") for p, step in view.samples]
        loss_image = Image.open(plot).convert("RGB") if plot else None
        return loss_image, pd.DataFrame(rows, columns=headers), grids, view.mixture, view.eval_report, view.recipe

    outputs = [curve, metrics, samples, mixture, report, recipe]
    show.click(show_run, run_dir, outputs)
    if choices:
        app.load(show_run, run_dir, outputs)
