"""A reward model as a reward: a transformers sequence-classification model (a local directory or a
hub id) that scores text completions, as TRL's `GRPOTrainer` accepts one in `reward_funcs`.

As TRL does (`GRPOTrainer._calculate_rewards`), the text scored is prompt + completion: for a
conversational prompt the messages with the completion appended, rendered by the reward model's own
chat template (`trl.data_utils.apply_chat_template`); otherwise the two strings joined. The score is
the first logit (`num_labels=1`). An image completion has no text: the model returns None there ("does
not apply"), so it can sit next to image rewards in one recipe.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import RecipeError, UserError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CHUNK = 16   # completions per forward: bounded memory whatever the group size


def _local(name: str, base: Path | None) -> Path | None:
    for path in (Path(name), (base / name) if base is not None else None):
        if path is not None and (path / "config.json").is_file():
            return path
    return None


def is_reward_model(name: str, base: Path | None = None) -> bool:
    """A directory holding a model (`config.json`), or a name shaped like a hub id (`owner/name`)."""
    return _local(name, base) is not None or (_HUB_ID.fullmatch(name) is not None and not Path(name).exists())


class RewardModel:
    """Callable with the reward convention: `model(prompts=..., completions=..., **kwargs)`."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.__name__ = model, tokenizer, name

    @classmethod
    def load(cls, name: str, where: str, base: Path | None = None) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..model.loading import device, hub_model

        local = _local(name, base)
        try:
            path = str(local) if local is not None else hub_model(name)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, UserError) as err:
            raise RecipeError(f"{where}.fn: cannot load {name!r} as a sequence-classification reward model: "
                              f"{err}") from None
        if tokenizer.pad_token is None:   # as TRL: batches are padded, and many reward models have no pad token
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.to(device()).eval(), tokenizer, Path(name).name)

    def texts(self, prompts: list, completions: list) -> list[str | None]:
        from trl.data_utils import apply_chat_template

        out = []
        for prompt, completion in zip(prompts, completions):
            if not isinstance(completion, (str, list)):   # an image
                out.append(None)
            elif isinstance(prompt, list):
                out.append(apply_chat_template({"messages": prompt + completion}, self.tokenizer)["text"])
            else:
                out.append(str(prompt) + str(completion))
        return out

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        texts = self.texts(prompts, completions)
        todo = [t for t in texts if t is not None]
        scores = []
        for start in range(0, len(todo), _CHUNK):
            inputs = self.tokenizer(text=todo[start:start + _CHUNK], return_tensors="pt", padding=True,
                                    padding_side="right", add_special_tokens=False).to(self.model.device)
            scores += self.model(**inputs).logits[:, 0].float().tolist()
        found = iter(scores)
        return [None if t is None else next(found) for t in texts]
