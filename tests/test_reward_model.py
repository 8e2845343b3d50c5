"""A sequence-classification model as a reward (TRL's `reward_funcs` accepts one): the text it
scores is TRL's (prompt + completion, or the conversation through its chat template), padded
batches score as single texts do, images get None."""

import pytest
import torch
from conftest import tiny_reward_model
from PIL import Image

from janus_ft.errors import RecipeError
from janus_ft.eval.rewards import load_rewards


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm")


def alone(reward, text: str) -> float:
    """The score of one text through a plain forward, no padding."""
    model, tok = reward.fn.model, reward.fn.tokenizer
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()


def test_scores_prompt_plus_completion_as_one_unpadded_text(rm_dir):
    [reward] = load_rewards([{"fn": str(rm_dir), "weight": 0.5}])
    assert reward.label == "tiny-rm" and reward.weight == 0.5
    prompts, completions = ["What colour is the shape?", "Say hi"], [" red", " hello there, a longer answer"]
    scores = reward.fn(prompts=prompts, completions=completions, completion_ids=[[1], [2]])
    want = [alone(reward, p + c) for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(want, abs=1e-5) and scores[0] != pytest.approx(scores[1], abs=1e-4)


def test_conversational_prompts_go_through_the_chat_template_and_images_get_none(rm_dir):
    [reward] = load_rewards([str(rm_dir)])
    prompt = [{"role": "user", "content": "What colour is the shape?"}]
    completion = [{"role": "assistant", "content": "red"}]
    text = reward.fn.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert reward.fn.texts([prompt], [completion]) == [text]
    scores = reward.fn(prompts=[prompt, "a red fox"], completions=[completion, Image.new("RGB", (8, 8))])
    assert scores[0] == pytest.approx(alone(reward, text), abs=1e-5) and scores[1] is None


def test_a_hub_id_that_cannot_load_is_a_recipe_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError, match="grpo.rewards\\[0\\].fn: cannot load 'nobody/no-such-rm' as a "
                                          "sequence-classification reward model"):
        load_rewards(["nobody/no-such-rm"])
