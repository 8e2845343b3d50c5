"""The GRPO trainer: transformers' `Trainer` (optimizer, schedule, accumulation, checkpoints, resume,
DDP) with sampling and the GRPO loss in place of a dataset's batches.

Why not TRL's `GRPOTrainer`: it samples through `processing_class` + `model.generate` on chat
messages and scores completions with the LM head only. Janus's image path samples with CFG through
`generate(generation_mode="image")` and scores codes with the generation head, and its prompts must
be rendered as janus_ft trains them. What is TRL's here: the config names (`GRPOConfig`), the
formulas (`model.grpo_loss`), the reward-function call convention and the logged metric names
(`reward`, `reward_std`, `rewards/<fn>/mean`, `kl`, `clip_ratio/region_mean`, `completions/mean_length`).

Each micro-batch takes `per_device_train_batch_size / num_generations` prompts; `_prepare_inputs`
samples their groups with the adapter on (the weights the update differentiates), scores them
with the rewards, normalises advantages per group and, with `beta > 0`, computes the reference
log-probabilities with the adapter disabled; `compute_loss` is the clipped surrogate (+ KL). Seeds
of the sampling depend only on (seed, step, micro-batch, prompt), so a resumed run draws what the
straight run drew.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from accelerate.logging import get_logger
from transformers import Trainer

from ..data.prompts import Prompt
from ..eval.sampler import Sampler, Scored, evaluate_rewards, sampling_seed
from ..infer.generate import contact_sheet
from ..model.grpo_loss import group_advantages, grpo_loss
from ..model.logprobs import target_logps
from .upstream import AtomicCheckpoints

__all__ = ["GrpoTrainer", "PromptIndices", "Sampler", "collate_indices", "evaluate_rewards", "sampling_seed"]

logger = get_logger(__name__)


class PromptIndices(torch.utils.data.Dataset):
    """The Trainer's dataset: prompt indices (sampling happens in the trainer, not the loader)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def collate_indices(indices: list[int]) -> dict:
    return {"prompt_index": torch.tensor(indices)}


class GrpoTrainer(AtomicCheckpoints, Trainer):
    def __init__(self, *args, sampler: Sampler, prompts: list[Prompt], eval_prompts: list[Prompt],
                 eval_images: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler, self.prompts, self.eval_prompts = sampler, prompts, eval_prompts
        self.eval_images = eval_images
        self.g = sampler.grpo
        self.seed = self.g.seed if self.g.seed is not None else self.args.seed
        self._metrics = defaultdict(list)
        self._micro, self._micro_step = 0, None

    # ---- sampling -------------------------------------------------------------------------------

    def _prepare_inputs(self, inputs: dict) -> dict:
        step, n = self.state.global_step, self.g.num_generations
        self._micro = self._micro + 1 if self._micro_step == step else 0
        self._micro_step = step
        prompts = [self.prompts[i] for i in inputs["prompt_index"].tolist()]
        seeds = [sampling_seed(self.seed, step, self._micro * 1000 + self.args.process_index, k)
                 for k in range(len(prompts))]
        model = self.accelerator.unwrap_model(self.model)
        scored = self.sampler.sample(model, prompts, n, seeds, self.state)
        advantages = group_advantages(scored.total, n, self.g.scale_rewards)
        batch = {k: (v.to(self.args.device) if torch.is_tensor(v) else v) for k, v in scored.batch.items()}
        batch["loss_plan"] = {k: v.to(self.args.device) for k, v in scored.batch["loss_plan"].items()}
        out = {"batch": batch, "advantages": advantages.to(self.args.device), "scored": scored}
        if self.g.beta != 0.0:
            with torch.no_grad(), model.disable_adapter():
                out["ref_logps"] = target_logps(model, batch).tokens
        self._log_sampling(scored, n)
        return out

    def _log_sampling(self, scored: Scored, n: int) -> None:
        """TRL's sampling metrics, NaN-aware: a reward's None is left out of its mean, a completion no
        reward applies to out of `reward`; a metric with no value in this batch is not logged."""
        from trl.trainer.utils import nanstd

        m = self._metrics

        def put(key: str, value: torch.Tensor) -> None:
            if torch.isfinite(value):
                m[key].append(value.item())

        for j, reward in enumerate(self.sampler.rewards):
            put(f"rewards/{reward.label}/mean", scored.rewards[:, j].nanmean())
            put(f"rewards/{reward.label}/std", nanstd(scored.rewards[:, j]) if len(scored.total) > 1 else torch.tensor(0.0))
        put("reward", scored.total.nanmean())
        group_std = nanstd(scored.total.view(-1, n), dim=1)
        put("reward_std", group_std.nanmean())
        m["frac_reward_zero_std"].append(torch.isclose(group_std, torch.zeros_like(group_std)).float().mean().item())
        for name, values in self.sampler.logged.items():   # a reward's log_metric(name, value)
            m[name].append(sum(values) / len(values))
        self.sampler.logged.clear()
        text = [length for length, task in zip(scored.lengths, scored.tasks) if task != "generation"]
        if text:
            m["completions/mean_length"].append(sum(text) / len(text))
            cut = [t for t, task in zip(scored.truncated, scored.tasks) if task != "generation"]
            m["completions/clipped_ratio"].append(sum(cut) / len(cut))

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch, scored = inputs["batch"], inputs["scored"]
        lp = target_logps(model, batch)
        mask = lp.mask
        if self.g.mask_truncated_completions:   # text only: an image is never truncated
            keep = torch.tensor([not t for t in scored.truncated], device=mask.device)
            mask = mask & keep[:, None]
        image_tokens = self.sampler.processor.num_image_tokens
        lengths = torch.tensor([float(image_tokens if t == "generation" else self.g.max_completion_length)
                                for t in scored.tasks], device=mask.device)
        out = grpo_loss(lp.tokens, mask, inputs["advantages"], ref_logps=inputs.get("ref_logps"), beta=self.g.beta,
                        epsilon=self.g.epsilon, epsilon_high=self.g.epsilon_high, loss_type=self.g.loss_type,
                        lengths=lengths, step_tokens=int(mask.sum()))
        if not torch.isfinite(out.loss):
            from .checkpoint import TrainingError
            raise TrainingError(f"non-finite GRPO loss at step {self.state.global_step + 1}: training stopped. "
                                "Lower train.learning_rate or check the rewards")
        self._metrics["kl"].append(out.kl.item())
        self._metrics["clip_ratio/region_mean"].append(out.clip_fraction.item())
        return (out.loss, None) if return_outputs else out.loss

    def floating_point_ops(self, inputs) -> int:
        return 0   # inputs are prompt indices: transformers' token-count estimate does not apply

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs:   # every rank logs at the same steps (the Trainer reduces the loss there too)
            logs.update(mean_over_ranks({k: v for k, v in self._metrics.items() if v}, self.accelerator))
            self._metrics.clear()
        super().log(logs, start_time)

    # ---- held-out evaluation --------------------------------------------------------------------

    def evaluate(self, *args, **kwargs) -> dict:
        """Mean reward on the held-out prompts (fixed seeds: every evaluation draws from the same
        noise, so the curve shows the model changing) and a grid of the images sampled for the first
        `train.eval_images` generation prompts (`output_dir/samples/step-N.png`)."""
        if not self.eval_prompts:
            return {}
        n = self.g.num_generations_eval or self.g.num_generations
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_rewards(self.sampler, model, self.eval_prompts, n, self.seed, trainer_state=self.state)
        if self.is_world_process_zero():
            self._grid(model)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _grid(self, model) -> Path | None:
        captions = [p for p in self.eval_prompts if p.task == "generation"][:self.eval_images]
        if not captions:
            return None
        scored = self.sampler.sample(model, captions, 1, [sampling_seed(self.seed, -1, 0, k) for k in range(len(captions))],
                                     self.state)
        path = Path(self.args.output_dir) / "samples" / f"step-{self.state.global_step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(scored.images, columns=len(captions)).save(path)
        return path


def mean_over_ranks(metrics: dict[str, list[float]], accelerator) -> dict[str, float]:
    """Each metric's mean over the values every rank collected since the last log: each rank
    samples its own prompts, so one rank's rewards are only part of the step. Ranks may hold
    different keys (a rank whose prompts were all images has no text lengths), hence objects."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        merged: dict[str, list[float]] = defaultdict(list)
        for part in gather_object([metrics]):
            for key, values in part.items():
                merged[key] += values
        metrics = merged
    return {k: sum(v) / len(v) for k, v in metrics.items()}
