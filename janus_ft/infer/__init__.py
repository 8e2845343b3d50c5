"""Inference: `prompts` (built exactly as training builds them), `chat` (answers, batched),
`generate` (images with classifier-free guidance), `rollout` (GRPO's sampled groups), and `engine`
(`Janus`: a base with named adapters, the object the Python API, `chat`, `generate` and the UI use)."""
