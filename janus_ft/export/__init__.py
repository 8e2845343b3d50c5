"""Export: `merge` (a LoRA adapter into a plain transformers checkpoint) and `convert` (DeepSeek's
original layout <-> transformers-native) with its `io`, `names`, `config` and `assets`."""
