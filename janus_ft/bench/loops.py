"""The loops `janus-ft bench` times, on the same batches: janus_ft's trainer with a stopwatch on
its stages, a plain PyTorch loop (AdamW, same model, LoRA, collator and loss), either of which can
take turns with the trainer step by step (`--interleave`: the bare loop's `step`, or another
trainer run a step at a time by `TrainerTurns`); and the VQ re-encoding the code cache saves."""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from ..model.heads import HEAD_CHUNK_SIZE


def trainer_loop(model, mixture, collator, args, processor, timer, reencode=None, between=None,
                 head_chunk_size: int = HEAD_CHUNK_SIZE) -> None:
    """Train with janus_ft's trainer, timed by stage. `between(before_step, step)`, if given, is
    called at each step's begin (True) and end (False); it must charge its own time off `timer`."""
    from transformers import TrainerCallback

    from ..train.sft import SftTrainer

    class TimedTrainer(SftTrainer):
        """janus_ft's SFT trainer with a stopwatch on its data, forward and backward stages."""

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            with timer.part("data"):
                batches, n_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            for batch in batches:
                timer.count(batch)
            return batches, n_items

        def training_step(self, model, inputs, num_items_in_batch=None):
            if reencode is not None:
                with timer.part("vq_encode"):
                    inputs = reencode(inputs)
            start, forward = timer.now(), timer.parts["forward"]
            loss = super().training_step(model, inputs, num_items_in_batch)
            # training_step = move to the device + compute_loss (timed there) + backward; the move
            # counts as forward, as in the bare loop
            timer.add("forward", timer.moved_at - start)
            timer.add("backward", timer.now() - start - (timer.parts["forward"] - forward))
            timer.loss += float(loss)
            timer.last_backward_end = timer.now()
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            timer.moved_at = timer.now()
            with timer.part("forward"):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class Stopwatch(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):   # gradient clipping + step
            timer.add("optimizer", timer.now() - timer.last_backward_end)

        def on_step_begin(self, args, state, control, **kwargs):
            if between is not None:
                between(True, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            timer.end_step()
            if between is not None:
                between(False, state.global_step - 1)

        def on_train_begin(self, args, state, control, **kwargs):
            timer.restart()

    trainer = TimedTrainer(model=model, args=args, train_dataset=mixture.as_hf_dataset(), processing_class=processor,
                           data_collator=collator, callbacks=[Stopwatch()], head_chunk_size=head_chunk_size)
    trainer.train()


class TrainerTurns:
    """A second trainer that trains one optimizer step per `step()` call, while the caller waits.

    `run(between)` runs a whole training (`trainer_loop`) and calls `between(before_step, step)` at
    each step's begin and end; here it runs in a thread that hands the turn back at every step's
    end, so exactly one of the two trainers computes at any time: the other's step stays out of
    this one's clock (`timer`), wall and CPU time alike (the process's CPU time counts both
    threads). `finish()` lets the training end after its last step."""

    def __init__(self, run, timer):
        self.timer, self.error, self.started = timer, None, False
        self._go, self._paused = threading.Semaphore(0), threading.Semaphore(0)
        self.thread = threading.Thread(target=self._train, args=(run,), daemon=True)

    def _train(self, run) -> None:
        self._go.acquire()
        try:
            run(self._between)
        except BaseException as err:   # re-raised in the caller's thread
            self.error = err
        finally:
            self._paused.release()

    def _between(self, before_step: bool, step: int) -> None:
        if before_step:
            return
        wall, cpu = self.timer.now(), time.process_time()
        self._paused.release()
        self._go.acquire()
        self.timer.exclude(self.timer.now() - wall, time.process_time() - cpu)

    def step(self) -> None:
        if not self.started:
            self.started = True
            self.thread.start()
        self._go.release()
        self._paused.acquire()
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        if self.started and self.thread.is_alive():
            self._go.release()
            self.thread.join()
        if self.error is not None:
            raise self.error


class BareLoop:
    """The same training with nothing but PyTorch: what the framework is measured against. Built
    once, then `step()` runs one optimizer step (so it can also take turns with the trainer)."""

    def __init__(self, model, mixture, collator, args, n_steps: int, timer, head_chunk_size: int = HEAD_CHUNK_SIZE):
        from accelerate.utils import send_to_device
        from transformers import get_scheduler

        from ..model.loss import compute_loss_parts, core_model

        self.send, self.loss_parts = send_to_device, compute_loss_parts
        self.model, self.args, self.timer, self.head_chunk_size = model, args, timer, head_chunk_size
        self.device = torch.device(args.device)
        if not getattr(core_model(model), "hf_device_map", None):   # quantized models are placed at load
            model.to(self.device)
        model.train()
        if args.activation_checkpointing:   # as the Trainer does it (non-reentrant: see train.arguments)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs)
        loader = torch.utils.data.DataLoader(
            mixture, batch_size=args.per_device_train_batch_size, collate_fn=collator,
            num_workers=args.dataloader_num_workers, pin_memory=self.device.type == "cuda")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                           eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                           fused="fused" in str(args.optim))
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, args.get_warmup_steps(n_steps), n_steps)
        self.autocast = ((lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if args.bf16
                         else contextlib.nullcontext)
        self.batches = iter(loader)

    def step(self) -> None:
        args, timer, model = self.args, self.timer, self.model
        timer.restart()
        with timer.part("data"):
            micro = [next(self.batches) for _ in range(args.gradient_accumulation_steps)]
        n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        for batch in micro:
            timer.count(batch)
            with timer.part("forward"):   # the move to the device included, as in the trainer
                batch = self.send(batch, self.device, non_blocking=True)
                with self.autocast():
                    loss = self.loss_parts(model, batch, False, self.head_chunk_size).total / max(n_items, 1)
            with timer.part("backward"):
                loss.backward()
            timer.loss += loss.item()
        with timer.part("optimizer"):
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        timer.end_step()


class Reencoder:
    """Re-encodes the generation targets of a batch through the VQ encoder, as training without the
    code cache must every step (the image is found from its cached codes; the codes must agree)."""

    def __init__(self, model, datasets):
        from ..model.loss import core_model

        gen = datasets.get("generation")
        self.paths = {tuple(c): p for p, c in (gen.codes or {}).items()} if gen is not None else {}
        self.model, self.image_token_id = model, core_model(model).config.image_token_id
        self.n = len(next(iter(self.paths))) if self.paths else 1
        self.differing = 0

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        from ..data.vq import (
            encode_images,
            generation_image_size,
            preprocess_generation_image,
        )
        from ..model.loss import target_masks

        _, gen = target_masks(batch, self.image_token_id)
        if not gen.any():
            return batch
        cached = batch["labels"][gen].view(-1, self.n)
        size = generation_image_size(self.model)
        pixels = torch.stack([preprocess_generation_image(Image.open(self.paths[tuple(c.tolist())]), size)
                              for c in cached])
        codes = encode_images(self.model, pixels)
        self.differing += int((codes != cached).any(dim=1).sum())
        batch = dict(batch, labels=batch["labels"].clone())
        batch["labels"][gen] = codes.flatten()
        return batch
