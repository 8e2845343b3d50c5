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
from .session import BASE, Workbench, out_of_memory_message


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
    import gradio as gr
    import pandas as pd

    plots = Path(tempfile.mkdtemp(prefix="janus-ft-ui-"))
    # the runs under --runs, then the adapters that are run directories themselves
    run_choices = list(dict.fromkeys(str(p) for p in [*find_runs(runs_root), *bench.adapters.values()]
                                     if (Path(p) / STATE).is_file()))

    with gr.Blocks(title="janus-ft") as app:
        gr.Markdown(f"## janus-ft · `{bench.model_path}` with adapters: "
                    f"{', '.join(bench.adapters) or 'none'}")
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="conversation", elem_id="chat-log", render_markdown=False,
                                         feedback_options=None)
                    message = gr.Textbox(label="message", elem_id="chat-message", placeholder="Ask about the image")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="chat-send")
                        clear = gr.Button("Clear", elem_id="chat-clear")
                with gr.Column(scale=2):
                    chat_model = gr.Dropdown(bench.names, value=bench.names[-1], label="model", elem_id="chat-model")
                    chat_image = gr.File(label="image", file_types=["image"], elem_id="chat-image", height=120)
                    system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="system prompt", lines=3)
                    max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens", elem_id="chat-max-new")
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
                    seed = gr.Number(0, precision=0, label="seed")

            @shown
            def chat(text, image, messages, system, name, max_new, temperature, top_p, seed):
                images = [image] if image else []
                record = bench.record(text, images, system, history_pairs(messages))
                messages = list(messages) + ([{"role": "user", "content": gr.Image(image)}] if image else [])
                messages += [{"role": "user", "content": text}]
                for partial in bench.stream(name, record, decoding(max_new, temperature, top_p, seed, system)):
                    yield messages + [{"role": "assistant", "content": partial}], ""

            inputs = [message, chat_image, chatbot, system, chat_model, max_new, temperature, top_p, seed]
            send.click(chat, inputs, [chatbot, message])
            message.submit(chat, inputs, [chatbot, message])
            clear.click(lambda: [], None, chatbot)

        with gr.Tab("Text to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    caption = gr.Textbox(label="caption", elem_id="gen-caption")
                    gen_model = gr.Dropdown(bench.names, value=bench.names[-1], label="model")
                    n_images = gr.Slider(1, 16, value=4, step=1, label="images", elem_id="gen-n")
                    cfg = gr.Slider(1, 10, value=CFG_SCALE, step=0.5, label="CFG scale")
                    gen_temperature = gr.Slider(0, 2, value=1, step=0.05, label="temperature (0 = greedy)")
                    gen_seed = gr.Number(0, precision=0, label="seed", elem_id="gen-seed")
                    draw = gr.Button("Generate", variant="primary", elem_id="gen-go")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="images", format="png", columns=4, elem_id="gen-gallery")

            @shown
            def generate(caption, name, n, cfg, temperature, seed):
                images = bench.draw(name, caption, int(n), float(cfg), float(temperature), int(seed or 0))
                return [(im, f"{name} #{i}") for i, im in enumerate(images)]

            draw.click(generate, [caption, gen_model, n_images, cfg, gen_temperature, gen_seed], gallery)

        with gr.Tab("Side by side"):
            with gr.Row():
                with gr.Column(scale=2):
                    compared = gr.CheckboxGroup(bench.names, value=bench.names, label="models", elem_id="sbs-models")
                    sbs_prompt = gr.Textbox(label="prompt (a question, or a caption to draw)", elem_id="sbs-prompt")
                    sbs_image = gr.File(label="image (for questions)", file_types=["image"], height=120, elem_id="sbs-image")
                    with gr.Row():
                        sbs_max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens", elem_id="sbs-max-new")
                        sbs_seed = gr.Number(0, precision=0, label="seed (the same for every model)")
                    with gr.Row():
                        ask = gr.Button("Answer", variant="primary", elem_id="sbs-answer")
                        paint = gr.Button("Draw", elem_id="sbs-draw")
                    with gr.Row():
                        new_adapter = gr.Textbox(label="load another adapter (directory)", elem_id="sbs-adapter-path")
                        add = gr.Button("Load adapter", elem_id="sbs-adapter-load")
                with gr.Column(scale=3):
                    answers = gr.Dataframe(headers=["model", "answer"], label="answers", elem_id="sbs-answers",
                                           interactive=False, wrap=True)
                    drawings = gr.Gallery(label="drawings", format="png", columns=4, elem_id="sbs-gallery")

            @shown
            def answer_all(names, text, image, max_new, seed):
                if not names:
                    raise UserError("tick at least one model to compare")
                settings = decoding(max_new, 0.0, 1.0, seed, None)
                images = [image] if image else []
                return [[name, bench.answer(name, bench.record(text, images, None), settings)] for name in names]

            @shown
            def draw_all(names, text, seed):
                if not names:
                    raise UserError("tick at least one model to compare")
                return [(im, f"{name} #{i}") for name in names
                        for i, im in enumerate(bench.draw(name, text, 2, CFG_SCALE, 1.0, int(seed or 0)))]

            @shown
            def load_adapter(path, ticked):
                name = bench.add_adapter(path)
                choices = gr.update(choices=bench.names)
                return (gr.update(choices=bench.names, value=list(ticked) + [name]), choices, choices,
                        gr.update(value=""))

            ask.click(answer_all, [compared, sbs_prompt, sbs_image, sbs_max_new, sbs_seed], answers)
            paint.click(draw_all, [compared, sbs_prompt, sbs_seed], drawings)
            add.click(load_adapter, [new_adapter, compared], [compared, chat_model, gen_model, new_adapter])

        with gr.Tab("Runs"):
            with gr.Row():
                run_dir = gr.Dropdown(run_choices, value=run_choices[0] if run_choices else None, label="run directory",
                                      allow_custom_value=True, elem_id="run-dir", scale=4)
                show = gr.Button("Show", variant="primary", elem_id="run-show", scale=1)
            with gr.Row():
                curve = gr.Image(label="loss per task (train solid, validation dashed)", elem_id="run-loss",
                                 type="pil")
                metrics = gr.Dataframe(label="evaluation during training", elem_id="run-metrics", interactive=False)
            samples = gr.Gallery(label="samples over steps (samples/step-N.png)", format="png", columns=4,
                                 elem_id="run-samples")
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
                table = pd.DataFrame(rows, columns=headers)
                loss_image = Image.open(plot).convert("RGB") if plot else None
                return loss_image, table, grids, view.mixture, view.eval_report, view.recipe

            show.click(show_run, run_dir, [curve, metrics, samples, mixture, report, recipe])
            if run_choices:
                app.load(show_run, run_dir, [curve, metrics, samples, mixture, report, recipe])
    return app


__all__ = ["BASE", "build_app", "history_pairs", "shown"]
