"""The web page of `janus-ft ui` (Gradio, the optional `ui` extra): chat, text-to-image, side by
side (base and adapters on one loaded base) and training runs. `session` holds the model and its
adapters, `runs` reads output directories, `app` lays out the page."""
