"""Rollouts: the batch that scores completions scores exactly the sampled tokens, with the
distribution they were sampled from; images are always N codes, never truncated."""

import torch

from janus_ft.data.conversation import render
from janus_ft.data.records import Record
from janus_ft.data.tokens import encode
from janus_ft.infer.prompts import prompt_record, record_inputs
from janus_ft.infer.rollout import Rollout, completion_batch, sample_images, sample_text
from janus_ft.janus import SpecialIds
from janus_ft.model.logprobs import target_logps


def test_text_logprobs_of_the_batch_equal_the_sampling_distribution(tiny_base):
    model, processor = tiny_base
    record = prompt_record("What is 1 + 5?")
    inputs = record_inputs(processor, record, "janus-pro")
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, top_k=0, max_new_tokens=3, min_new_tokens=3, num_return_sequences=2,
                         output_scores=True, return_dict_in_generate=True, max_length=None,
                         pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=-1)
    prompt = inputs["input_ids"][0].tolist()
    completions = out.sequences[:, len(prompt):]
    expected = sum(torch.log_softmax(s.float(), -1).gather(1, completions[:, i:i + 1]).squeeze(1)
                   for i, s in enumerate(out.scores))
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    batch = completion_batch([Rollout("text", prompt, completions.tolist(), [True, True])], special,
                             model.config.image_token_id)
    with torch.no_grad():
        lp = target_logps(model, batch)
    assert lp.counts.tolist() == [3, 3]
    torch.testing.assert_close(lp.sums, expected, atol=1e-4, rtol=1e-4)


def test_image_rollouts_are_never_truncated_and_start_from_the_trained_prefix(tiny_base):
    model, processor = tiny_base
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    rollout = sample_images(model, processor, "a red fox", "janus-pro", n=3, cfg=5.0, seed=1)
    assert rollout.truncated == [False] * 3 and {len(c) for c in rollout.completions} == {processor.num_image_tokens}
    record = Record(task="generation", turns=[("a red fox", "<image>")], system="")
    ids, _ = encode(render(record, "janus-pro"), processor.tokenizer, special, processor.num_image_tokens)
    assert rollout.prompt_ids == ids[:ids.index(special.boi) + 1]
    batch = completion_batch([rollout], special, model.config.image_token_id)
    assert target_logps(model, batch).counts.tolist() == [processor.num_image_tokens] * 3


def test_text_answers_end_at_eos_or_are_truncated(tiny_base):
    model, processor = tiny_base
    rollout = sample_text(model, processor, prompt_record("Say hi"), "janus-pro", n=6, max_new_tokens=2, seed=0)
    eos = processor.tokenizer.eos_token_id
    for completion, cut in zip(rollout.completions, rollout.truncated):
        assert (eos not in completion and len(completion) == 2) if cut else completion[-1] == eos
