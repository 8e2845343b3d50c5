"""Inference: `prompts` (built exactly as training builds them), `chat` (answers, batched),
`generate` (images with classifier-free guidance)."""
