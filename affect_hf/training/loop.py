"""The one training loop (how), for every recipe (what): Accelerate, accumulation, clipping, mixed precision,
schedules, trackers, progress, atomic state saving, exact resume, model selection and pushing.

`train(training_args, recipe_args)` runs the phases of `_Run`: prepare the output folder, build (model, data,
optimiser, schedule), resume, then train epoch by epoch and finish (select, push). It returns the trainer state
(`state.TrainerState`) that is also written to `output_dir/training_history.json`. The loop knows nothing of the
task: it logs every `*loss` field the model returns, asks the recipe to evaluate, and keeps the model the recipe's
score selects.
"""

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.datasets import UNREADABLE_IMAGES_KEY, collate_skipping_unreadable
from ..files import OutputLock, atomic_path
from ..hub import push_folder_to_hub
from ..models import readable_weights
from .arguments import TrainingArguments, resolve_mixed_precision
from .command_line import parse_train_arguments
from .optimization import build_schedule
from .recipes import get_recipe
from .recipes.base import Evaluation, Recipe
from .state import (
    BEST_MODEL_DIR,
    FIGURES_DIR,
    HISTORY_FILE,
    CorruptStateError,
    TrainerState,
    find_latest_state,
    load_stream_state,
    prepare_output_dir,
    save_training_state,
    select_resume_state,
    write_history,
)
from .step import TrainingStep


logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; raised on every process at the same step."""


class NoModelSavedError(ValueError):
    """The run ended without a saved model (every evaluation's score was NaN)."""


def make_accelerator(args: TrainingArguments, project_name: str) -> Accelerator:
    report_to = None if args.report_to == "none" else args.report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            logger.warning("tensorboard is not installed: no tracker (pip install 'affect-hf[tensorboard]')")
            report_to = None
    return Accelerator(
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        log_with=report_to,
        project_dir=args.output_dir,
        # The loop steps the schedule once per optimiser step itself, whatever the number of processes.
        step_scheduler_with_optimizer=False,
        # A sampler seeded by (seed, epoch): the resumed epoch visits the samples in the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


class _MapStyleBatches:
    """A shuffled map-style dataset, sharded by Accelerate; resumed by skipping the consumed batches' indices."""

    def __init__(self, dataset, dataloader, accelerator: Accelerator):
        self.dataset, self.dataloader, self.accelerator = dataset, dataloader, accelerator
        self.batches_per_epoch = len(dataloader)

    def epoch(self, epoch: int, consumed: int, stream_state: dict | None) -> Iterator[dict]:
        self.dataset.set_epoch(epoch)
        self.dataloader.set_epoch(epoch)
        yield from self.accelerator.skip_first_batches(self.dataloader, consumed) if consumed else self.dataloader

    def state(self) -> None:
        return None


class _StreamBatches:
    """An `ImageStream` for this process: a fixed number of batches per epoch on every process, resumable."""

    def __init__(self, stream, accelerator: Accelerator, batch_size: int, num_workers: int):
        self.stream, self.accelerator = stream, accelerator
        self.batch_size, self.num_workers = batch_size, num_workers
        self.batches_per_epoch = stream.batches_per_epoch(batch_size, accelerator.num_processes, num_workers)
        self.loader = None

    def epoch(self, epoch: int, consumed: int, stream_state: dict | None) -> Iterator[dict]:
        self.loader = self.stream.dataloader(
            epoch,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        if stream_state is not None:
            self.loader.load_state_dict(stream_state)
        for position, batch in enumerate(self.loader, start=consumed):
            if position >= self.batches_per_epoch:
                break
            yield send_to_device(batch, self.accelerator.device)

    def state(self) -> dict | None:
        return self.loader.state_dict() if self.loader is not None else None


class _LossWindow:
    """Sums of every `*loss` output, of images and of unreadable images over an accumulation window, on this process."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = self.images = self.unreadable = 0

    def add(self, outputs, images: int, unreadable: int) -> None:
        for name, value in outputs.items():
            if name.endswith("loss") and isinstance(value, torch.Tensor) and value.ndim == 0:
                self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.micro_batches += 1
        self.images += images
        self.unreadable += unreadable

    def reduce(self, accelerator: Accelerator) -> tuple[dict[str, float], int, int]:
        """Means over the window and all processes, and the processes' totals of images and unreadable images
        (one collective)."""
        names = sorted(self.sums)
        counts = torch.tensor([float(self.images), float(self.unreadable)], device=accelerator.device)
        sums = [self.sums[name].to(accelerator.device).reshape(1) for name in names]
        totals = accelerator.reduce(torch.cat([*sums, counts]), reduction="sum").tolist()
        count = self.micro_batches * accelerator.num_processes
        means = {name: total / count for name, total in zip(names, totals, strict=False)} if count else {}
        self.sums, self.micro_batches, self.images, self.unreadable = {}, 0, 0, 0
        return means, int(round(totals[-2])), int(round(totals[-1]))


def _raise_on_every_process(accelerator: Accelerator, error: BaseException | None) -> None:
    """Collective error: if any process failed, every process raises (the failed one its own error)."""
    failed = accelerator.gather(torch.tensor([error is not None], device=accelerator.device)).any().item()
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("another process failed (see its error above)")


def _check_evaluation_images(dataset, args: TrainingArguments, accelerator: Accelerator) -> None:
    """Decode every validation image once before training, so a bad file fails now, not after an epoch."""
    indices = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=32, num_workers=args.num_workers, collate_fn=len
    )
    error = None
    try:
        for _ in loader:
            pass
    except OSError as caught:
        error = OSError(f"a validation image cannot be read: {caught}")
    _raise_on_every_process(accelerator, error)


@dataclass
class _Plan:
    """What the build phase made: the prepared model, optimiser, schedule and data, and the run's sizes."""

    model: torch.nn.Module
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    training_step: TrainingStep
    train_batches: Any  # _MapStyleBatches or _StreamBatches
    eval_dataloader: DataLoader | None
    description: str
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    effective_batch: int
    learning_rate: float


class _Run:
    """One training run, in phases: `prepare_output`, `build`, `resume`, then `train` (epochs, `finish`)."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator):
        self.recipe, self.accelerator = recipe, accelerator
        self.args = recipe.args
        self.output_dir = Path(self.args.output_dir)
        self.state = TrainerState()
        self.stream_state: dict | None = None
        self.lock = OutputLock(self.output_dir)  # released by `train` whatever happens

    # ------------------------------------------------------------------ phases

    def prepare_output(self) -> None:
        """Take the output folder's lock and check the folder (main process; one training per folder); errors here
        leave no run record: the folder stays reusable."""
        error = None
        if self.accelerator.is_main_process:
            try:
                self.lock.acquire()
                prepare_output_dir(
                    self.output_dir,
                    bool(self.args.resume_from_checkpoint),
                    self.args.overwrite_output_dir,
                    run_files=(self.recipe.name, *self.recipe.run_files),
                )
            except (OSError, ValueError) as caught:
                error = caught
        _raise_on_every_process(self.accelerator, error)

    def build(self) -> None:
        """The model and data (from the shared seed), the loaders, the sizes, the optimiser and the schedule."""
        args, recipe, accelerator = self.args, self.recipe, self.accelerator
        set_seed(args.seed)
        sources = [str(value) for name, value in vars(recipe.recipe_args).items()
                   if value and name.endswith(("_path", "model_name_or_path"))]  # fmt: skip
        with readable_weights(" and ".join(sources) or "the model's folders"):
            model = recipe.build_model()
        data = recipe.build_data(model, accelerator)
        if data.evaluation is not None:
            _check_evaluation_images(data.evaluation, args, accelerator)

        if hasattr(data.train, "batches_per_epoch"):
            train_batches = _StreamBatches(data.train, accelerator, args.per_device_train_batch_size, args.num_workers)
        else:
            # Each loader draws its workers' base seed from its own generator, not from the global RNG: otherwise
            # re-creating the loader on resume would shift the random stream that dropout and drop path use.
            train_dataloader = DataLoader(
                data.train,
                batch_size=args.per_device_train_batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=args.num_workers,
                collate_fn=collate_skipping_unreadable,
                generator=torch.Generator().manual_seed(args.seed),
            )
            # Count batches on the prepared loader: it holds this process's share. Accelerate's seedable sampler
            # draws the same order on every process (from `data_seed`), whose seeds otherwise differ.
            train_batches = _MapStyleBatches(data.train, accelerator.prepare(train_dataloader), accelerator)
        if train_batches.batches_per_epoch == 0:
            raise ValueError(
                f"the training data ({data.description or 'train split'}) is smaller than one batch of "
                f"{args.per_device_train_batch_size} per process x {accelerator.num_processes} processes"
            )
        eval_dataloader = None
        if data.evaluation is not None:
            eval_dataloader = accelerator.prepare(
                DataLoader(
                    data.evaluation,
                    batch_size=args.per_device_eval_batch_size,
                    shuffle=False,
                    num_workers=args.num_workers,
                    generator=torch.Generator().manual_seed(args.seed),
                )
            )

        accumulation = args.gradient_accumulation_steps
        micro_batches_per_epoch = train_batches.batches_per_epoch
        steps_per_epoch = math.ceil(micro_batches_per_epoch / accumulation)
        total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs
        effective_batch = args.per_device_train_batch_size * accumulation * accelerator.num_processes
        learning_rate = args.learning_rate if args.learning_rate is not None else (
            args.base_learning_rate * effective_batch / 256
        )  # fmt: skip
        optimizer = recipe.optimizer(model, learning_rate)
        scheduler = build_schedule(
            optimizer,
            args.lr_schedule,
            warmup_steps=warmup_steps(args, steps_per_epoch, total_steps),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            min_lr_rate=min(1.0, args.min_learning_rate / learning_rate),
            gamma=args.lr_gamma,
        )
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.plan = _Plan(
            model=model,
            unwrapped=accelerator.unwrap_model(model),
            optimizer=optimizer,
            scheduler=scheduler,
            training_step=TrainingStep(accelerator, model, optimizer, scheduler, args.max_grad_norm),
            train_batches=train_batches,
            eval_dataloader=eval_dataloader,
            description=data.description,
            micro_batches_per_epoch=micro_batches_per_epoch,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            num_epochs=math.ceil(total_steps / steps_per_epoch),
            effective_batch=effective_batch,
            learning_rate=learning_rate,
        )
        # From here each process draws its own random numbers (MAE's and CoTEX's masks, drop path), as MAE seeds by
        # rank; the model was built from the shared seed.
        set_seed(args.seed, device_specific=True)
        # A stream's saved position holds one entry per DataLoader worker: resuming needs as many workers.
        stream_workers = args.num_workers if isinstance(train_batches, _StreamBatches) else None
        self.state.run = _fingerprint(recipe, self.plan, accelerator.num_processes, stream_workers)

    def resume(self) -> None:
        """Continue from a saved state when asked: model, optimiser, schedule, RNG, counters, stream position."""
        request, accelerator = self.args.resume_from_checkpoint, self.accelerator
        if not request:
            return
        state_path, saved = select_resume_state(self.output_dir, request, self.state.run)
        accelerator.load_state(str(state_path))
        saved.status = "running"
        self.state = saved
        self.stream_state = load_stream_state(state_path, accelerator.process_index)
        if isinstance(self.plan.train_batches, _StreamBatches) and saved.batches_in_epoch and self.stream_state is None:
            raise CorruptStateError(
                f"{state_path} holds no stream position for process {accelerator.process_index}: cannot resume the "
                "stream mid-epoch"
            )
        logger.info("resumed from %s at step %d", state_path, saved.global_step)

    def train(self) -> TrainerState:
        """Every epoch from where the state stands, then `finish`; a failure is recorded in the history."""
        plan, args, state, accelerator = self.plan, self.args, self.state, self.accelerator
        self.log_plan()
        tracker_config = {
            key: value for key, value in self.recipe.run_config().items() if isinstance(value, (int, float, str, bool))
        }
        accelerator.init_trackers(self.recipe.name, config=tracker_config)
        self.progress = tqdm(total=plan.total_steps, initial=state.global_step, desc=self.recipe.name,
                             disable=not accelerator.is_local_main_process)  # fmt: skip
        try:
            if args.eval_on_start and state.global_step == 0 and not state.history:
                self.evaluate(-1, None)
                self.write_history()
            self.window, self.interval, self.started = _LossWindow(), {}, time.perf_counter()
            self.window_batch = None
            for epoch in range(state.epoch, plan.num_epochs):
                if state.global_step >= plan.total_steps:
                    break
                self.run_epoch(epoch)
                self.evaluate_and_select(epoch)
                state.epoch, state.batches_in_epoch = epoch + 1, 0
                self.stream_state = None
                self.save_state()
            self.progress.close()
            self.finish()
        except BaseException as caught:
            self.progress.close()
            self.fail(caught)
            raise
        state.status = "completed"
        self.write_history()
        accelerator.wait_for_everyone()
        return state

    def run_epoch(self, epoch: int) -> None:
        """The epoch's micro-batches (from where a resumed state stopped), an optimiser step per window."""
        plan, state, accumulation = self.plan, self.state, self.args.gradient_accumulation_steps
        plan.model.train()
        consumed = state.batches_in_epoch if epoch == state.epoch else 0
        state.epoch, state.batches_in_epoch = epoch, consumed
        for batch in plan.train_batches.epoch(epoch, consumed, self.stream_state if consumed else None):
            unreadable = int(batch.pop(UNREADABLE_IMAGES_KEY, 0))
            position = state.batches_in_epoch
            window_start = position - position % accumulation
            window_end = min(window_start + accumulation, plan.micro_batches_per_epoch)
            last_in_window = position + 1 == window_end
            inputs = plan.unwrapped.main_input_name  # pixel_values; the temporal model's windows: features
            if self.skipped_everywhere(batch):
                self.skip_micro_batch(epoch, len(batch.get(inputs, ())) + unreadable, window_end - window_start,
                                      last_in_window)  # fmt: skip
                self.window.unreadable += unreadable
            else:
                outputs = plan.training_step.backward(batch, window_end - window_start, last_in_window)
                self.window.add(outputs, len(batch[inputs]), unreadable)
                self.window_batch = batch
            state.batches_in_epoch += 1
            if last_in_window:
                self.optimizer_step(epoch)
                if state.global_step >= plan.total_steps:
                    break

    def skipped_everywhere(self, batch: dict) -> bool:
        """Whether this micro-batch is skipped: when any process's holds no readable image, every process skips its
        own (data-parallel processes must run the same forwards and backwards, or the gradient all-reduce hangs)."""
        empty = self.plan.unwrapped.main_input_name not in batch
        if self.accelerator.num_processes == 1:
            return empty
        flag = torch.tensor([float(empty)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def skip_micro_batch(self, epoch: int, images: int, window_size: int, last_in_window: bool) -> None:
        """A micro-batch without a readable image (on some process) trains nothing. When it ends a window that did
        train, the window's last batch runs again at weight 0 on every process, so that the gradients are synced."""
        logger.warning(
            "epoch %d, batch %d: a micro-batch holds no readable image on some process; skipped (%d images here)",
            epoch, self.state.batches_in_epoch, images,
        )  # fmt: skip
        if last_in_window and self.window.micro_batches and self.accelerator.num_processes > 1:
            self.plan.training_step.backward(self.window_batch, window_size, last_in_window, weight=0.0)

    def optimizer_step(self, epoch: int) -> None:
        """The end of an accumulation window: the losses checked, the step taken and logged, and the evaluations
        and saves due between epoch ends."""
        plan, args, state, accelerator = self.plan, self.args, self.state, self.accelerator
        trained = self.window.micro_batches > 0  # the same on every process (skips are decided together)
        losses, window_images, window_unreadable = self.window.reduce(accelerator)
        self.window_batch = None
        step = state.global_step + 1
        state.train_images += window_images
        state.unreadable_images += window_unreadable
        if trained and not math.isfinite(losses["loss"]):
            raise NonFiniteLossError(
                f"the training loss is {losses['loss']} at step {step} (epoch {epoch}; losses {losses}): "
                f"training stopped. The last good state ({find_latest_state(self.output_dir)}) and the saved "
                f"model ({self.output_dir / BEST_MODEL_DIR}) are untouched; lower the learning rate or check "
                "the data, then resume or start again"
            )
        if args.max_bad_images is not None and state.unreadable_images > args.max_bad_images:
            raise OSError(
                f"{state.unreadable_images} training images could not be decoded by step {step}, more "
                f"than --max_bad_images {args.max_bad_images} (their paths are in the warnings above)"
            )
        plan.training_step.update(step_optimizer=trained)
        state.global_step = step
        self.progress.update(1)
        for name, value in losses.items():
            self.interval.setdefault(name, []).append(value)
        if (step % args.logging_steps == 0 or step == plan.total_steps) and self.interval:
            logs = {f"train/{name}": float(np.mean(values)) for name, values in self.interval.items()}
            logs["train/learning_rate"] = plan.scheduler.get_last_lr()[-1]
            logs["train/unreadable_images"] = state.unreadable_images
            logs["train/images_per_second"] = (
                len(self.interval["loss"]) * plan.effective_batch / max(time.perf_counter() - self.started, 1e-9)
            )
            accelerator.log(logs, step=step)
            self.progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
            self.interval, self.started = {}, time.perf_counter()
        # The epoch's end evaluates and saves anyway: the periodic ones are for the steps in between.
        in_between = step < plan.total_steps and state.batches_in_epoch < plan.micro_batches_per_epoch
        if args.eval_steps and step % args.eval_steps == 0 and in_between:
            self.evaluate_and_select(epoch)
            plan.model.train()
        if args.save_steps and step % args.save_steps == 0 and in_between:
            self.save_state()

    def finish(self) -> None:
        """A run that saved no model fails; the kept folder is pushed when asked (every process agrees)."""
        if self.state.saved_model_step is None:
            raise NoModelSavedError(
                f"no model was saved: every evaluation's {self.recipe.selection_score} was NaN (see "
                f"{self.output_dir / HISTORY_FILE})"
            )
        if self.args.push_to_hub:
            push_error = None
            if self.accelerator.is_main_process:
                try:
                    self.push()
                except Exception as caught:  # noqa: BLE001 (any failure: the saved folder stays, the run fails)
                    push_error = RuntimeError(f"pushing {self.output_dir / BEST_MODEL_DIR} to the Hub failed: {caught}")
            _raise_on_every_process(self.accelerator, push_error)

    # ------------------------------------------------------------------ records

    def log_plan(self) -> None:
        plan, args = self.plan, self.args
        logger.info(
            "%s: %s; %d processes x %d per device x %d accumulation = effective batch %d; learning rate %.3g "
            "(%s schedule, %.3g epochs of warmup); %d optimiser steps per epoch, %d steps (%d epochs)",
            self.recipe.name,
            plan.description,
            self.accelerator.num_processes,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            plan.effective_batch,
            plan.learning_rate,
            args.lr_schedule,
            args.warmup_epochs,
            plan.steps_per_epoch,
            plan.total_steps,
            plan.num_epochs,
        )

    def write_history(self) -> None:
        if self.accelerator.is_main_process:
            write_history(self.output_dir, self.state)

    def save_state(self) -> None:
        save_training_state(
            self.accelerator, self.output_dir, self.state, self.args.save_total_limit, self.plan.train_batches.state()
        )

    def fail(self, error: BaseException) -> None:
        step = self.state.global_step
        if isinstance(error, KeyboardInterrupt):
            self.state.status = f"interrupted at step {step}"
        else:
            self.state.status = f"failed: {error or type(error).__name__}"
        self.write_history()

    def push(self) -> None:
        args, state, recipe = self.args, self.state, self.recipe
        score = state.best_score
        message = f"{recipe.name}: best {recipe.selection_score} {score:.4f}" if score is not None else recipe.name
        url = push_folder_to_hub(
            self.output_dir / BEST_MODEL_DIR,
            args.hub_model_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            commit_message=message,
        )
        logger.info("pushed %s", url)

    # ------------------------------------------------------------------ evaluation and selection

    def evaluate_and_select(self, epoch: int) -> None:
        evaluation = self.evaluate(epoch, self.plan.scheduler.get_last_lr()[-1])
        self.keep_if_selected(evaluation, epoch)
        self.write_history()

    def evaluate(self, epoch: int, learning_rate: float | None) -> Evaluation:
        state, accelerator, loader = self.state, self.accelerator, self.plan.eval_dataloader
        evaluation = (
            self.recipe.evaluate(self.plan.model, loader, accelerator) if loader is not None else Evaluation(scores={})
        )
        scores = {name: float(value) for name, value in evaluation.scores.items()}
        step = state.global_step
        if scores:
            accelerator.log({f"eval/{name}": value for name, value in scores.items()}, step=step)
        entry = {
            "epoch": epoch,
            "step": step,
            **scores,
            "train_images": state.train_images,
            "unreadable_images": state.unreadable_images,
        }
        if learning_rate is not None:
            entry["learning_rate"] = learning_rate
        state.history.append(entry)
        if accelerator.is_main_process:
            self.save_figures(evaluation, step)
            shown = {key: round(value, 4) for key, value in scores.items() if not key.startswith("num_")}
            logger.info("evaluation at step %d (epoch %d): %s", step, epoch, shown)
        return evaluation

    def save_figures(self, evaluation: Evaluation, step: int) -> None:
        for name, image in evaluation.images.items():
            with atomic_path(self.output_dir / FIGURES_DIR / f"{name}_step{step:08d}.png") as staging:
                image.save(staging, format="PNG")
        for tracker in self.accelerator.trackers:
            if evaluation.images and hasattr(tracker, "log_images"):
                if tracker.name == "tensorboard":
                    arrays = {name: np.asarray(image)[None] for name, image in evaluation.images.items()}
                    tracker.log_images(arrays, step=step, dataformats="NHWC")
                else:
                    tracker.log_images({name: [image] for name, image in evaluation.images.items()}, step=step)

    def keep_if_selected(self, evaluation: Evaluation, epoch: int) -> None:
        """Save the model when the recipe's score improves (or always, for recipes that keep the last)."""
        state, recipe, accelerator = self.state, self.recipe, self.accelerator
        selection = recipe.selection_score
        score = evaluation.scores.get(selection) if selection else None
        if selection is not None:
            if score is None or math.isnan(score):
                logger.warning(
                    "step %d: %s is NaN or missing; it cannot select the model", state.global_step, selection
                )
                return
            best = state.best_score
            improved = best is None or (score > best if recipe.greater_is_better else score < best)
            if not improved:
                return
            state.best_score = score
        state.best_epoch, state.best_step = epoch, state.global_step
        state.best_scores = dict(evaluation.scores)
        state.saved_model_step = state.global_step
        if accelerator.is_main_process:
            recipe.save_model(self.plan.unwrapped, self.output_dir / BEST_MODEL_DIR, evaluation, recipe.run_config())
        accelerator.wait_for_everyone()


def warmup_steps(args: TrainingArguments, steps_per_epoch: int, total_steps: int) -> int:
    """The warmup in steps. A run cut by `--max_steps` before its warmup ends would never reach its peak rate (and
    learn nothing): its warmup is scaled to the same share of the run as in the whole schedule (at most half)."""
    steps = round(args.warmup_epochs * steps_per_epoch)
    if args.max_steps > 0 and steps >= total_steps:
        share = min(args.warmup_epochs / args.num_train_epochs, 0.5)
        scaled = round(share * total_steps)
        logger.warning(
            "the warmup (%g epochs, %d steps) is longer than this --max_steps %d run: scaled to %d steps, the share "
            "of the run it has in the whole schedule (%g of %d epochs)",
            args.warmup_epochs, steps, total_steps, scaled, args.warmup_epochs, args.num_train_epochs,
        )  # fmt: skip
        return scaled
    return steps


def _fingerprint(recipe: Recipe, plan: _Plan, num_processes: int, stream_workers: int | None) -> dict[str, Any]:
    return {
        "num_workers": stream_workers,
        "data": recipe.data_identity(),
        "recipe": recipe.name,
        "effective_batch_size": plan.effective_batch,
        "num_processes": num_processes,
        "learning_rate": plan.learning_rate,
        "total_steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "seed": recipe.args.seed,
    }


def train(training_args: TrainingArguments, recipe_args: Any = None) -> dict:
    """Train with `training_args.recipe`; the selected model is saved under `output_dir/best_model`.

    Returns the trainer state as a dict (`history`, `best_scores`, `global_step`, ...; `TrainerState.to_dict()`),
    also written to `output_dir/training_history.json` after every evaluation. Raises `NonFiniteLossError` (every
    process, same step) when the loss stops being finite, and `NoModelSavedError` when the run saved no model.
    """
    recipe_class = get_recipe(training_args.recipe)
    recipe = recipe_class(training_args, recipe_args if recipe_args is not None else recipe_class.arguments_class())
    accelerator = make_accelerator(recipe.args, recipe.name)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("affect_hf").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    run = _Run(recipe, accelerator)
    try:
        run.prepare_output()
        run.build()
        run.resume()
        return run.train().to_dict()
    finally:
        # Last, whatever happened: trackers are flushed, and in distributed runs the process group is torn down.
        run.lock.release()
        accelerator.end_training()


def main(argv: list[str] | None = None) -> dict:
    """The script's entry point: parse, train; an interrupt (Ctrl-C) ends with one line and exit status 130."""
    training_args, recipe_args = parse_train_arguments(argv)
    try:
        return train(training_args, recipe_args)
    except KeyboardInterrupt:
        print(
            f"interrupted; resume with --resume_from_checkpoint latest --output_dir {training_args.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


__all__ = ["NoModelSavedError", "NonFiniteLossError", "main", "make_accelerator", "train"]
