"""Model: `loading` (a Janus checkpoint and processor, quantized or with an adapter), `lora` (which
components get LoRA or train fully), `loss` (one forward and the per-task loss of a mixed batch)."""
