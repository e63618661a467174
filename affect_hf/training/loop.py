"""The EMMA training loop on Accelerate: mixed precision, accumulation, distribution, exact resume."""

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from modeling import EmmaForAffectAnalysis

from ..data import AbawMtlTorchDataset, load_abaw_mtl
from ..files import remove_stale_staging, replace_directory, write_text_atomically
from ..hub import push_folder_to_hub, render_model_card, save_model_folder
from ..labels import MISSING_ACTION_UNIT
from ..metrics import abaw_mtl_score, fit_au_thresholds
from .arguments import TrainArguments, resolve_mixed_precision
from .optimization import layer_decay_parameter_groups
from .presets import emma_config_from_preset


logger = logging.getLogger(__name__)

STATE_DIR_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"
BEST_MODEL_DIR = "best_model"
SELECTION_SCORE = "P_MTL"


def build_model(args: TrainArguments) -> EmmaForAffectAnalysis:
    """From a saved EMMA folder, from an MAE folder (+ a DAN folder), or a fresh preset."""
    if args.model_name_or_path:
        return EmmaForAffectAnalysis.from_pretrained(args.model_name_or_path, drop_path_rate=args.drop_path_rate)
    if args.mae_path:
        return EmmaForAffectAnalysis.from_pretrained_parts(
            args.mae_path, args.cnn_path, drop_path_rate=args.drop_path_rate
        )
    return EmmaForAffectAnalysis(emma_config_from_preset(args.model_config, drop_path_rate=args.drop_path_rate))


def au_pos_weight_from_labels(action_units: np.ndarray) -> list[float]:
    """Negatives / positives per AU over valid labels (1.0 where an AU has no positive or no negative)."""
    valid = action_units != MISSING_ACTION_UNIT
    positives = ((action_units == 1) & valid).sum(axis=0)
    negatives = ((action_units == 0) & valid).sum(axis=0)
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return [float(weight) for weight in weights]


@torch.no_grad()
def predict(model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator) -> tuple[dict, dict]:
    """Predictions and references over a whole split, in order, gathered across processes."""
    model.eval()
    collected: dict[str, list[np.ndarray]] = {
        key: [] for key in ("va", "expression_logits", "au_probabilities", "ref_va", "ref_expression", "ref_au")
    }
    for batch in dataloader:
        outputs = model(pixel_values=batch["pixel_values"])
        gathered = accelerator.gather_for_metrics(
            (
                outputs.valence_arousal.float(),
                outputs.logits.float(),
                torch.sigmoid(outputs.au_logits.float()),
                batch["valence_arousal"],
                batch["expression"],
                batch["action_units"],
            )
        )
        for key, value in zip(collected, gathered, strict=True):
            collected[key].append(value.cpu().numpy())
    arrays = {key: np.concatenate(values) for key, values in collected.items()}
    predictions = {
        "valence_arousal": arrays["va"],
        "expression": arrays["expression_logits"],
        "action_units": arrays["au_probabilities"],
    }
    references = {
        "valence_arousal": arrays["ref_va"],
        "expression": arrays["ref_expression"],
        "action_units": arrays["ref_au"],
    }
    return predictions, references


def evaluate_model(
    model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator, au_thresholds: list[float]
) -> tuple[dict[str, float], np.ndarray]:
    """ABAW scores at the model's AU thresholds, plus P_AU / P_MTL with thresholds fitted on this split."""
    predictions, references = predict(model, dataloader, accelerator)
    scores = abaw_mtl_score(predictions, references, au_thresholds=au_thresholds)
    fitted = fit_au_thresholds(predictions["action_units"], references["action_units"])
    fitted_scores = abaw_mtl_score(predictions, references, au_thresholds=fitted)
    scores["P_AU_fitted_thresholds"] = fitted_scores["P_AU"]
    scores["P_MTL_fitted_thresholds"] = fitted_scores["P_MTL"]
    return {key: float(value) for key, value in scores.items()}, fitted


def find_latest_state(output_dir: Path) -> Path | None:
    states_dir = output_dir / "checkpoints"
    if not states_dir.is_dir():
        return None
    states = [(int(m.group(1)), path) for path in states_dir.iterdir() if (m := STATE_DIR_PATTERN.match(path.name))]
    return max(states)[1] if states else None


def save_training_state(accelerator: Accelerator, output_dir: Path, trainer_state: dict, total_limit: int) -> None:
    """Accelerate state + our counters, written to a staging folder then renamed: a crash never leaves half a state."""
    states_dir = output_dir / "checkpoints"
    final = states_dir / f"step_{trainer_state['global_step']:08d}"
    if accelerator.is_main_process:
        states_dir.mkdir(parents=True, exist_ok=True)
    # Every process writes its part into the same staging folder, so its name is fixed, not random.
    staging = states_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        remove_stale_staging(states_dir, "step_*")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        replace_directory(staging, final)
        states = sorted(path for path in states_dir.iterdir() if STATE_DIR_PATTERN.match(path.name))
        for old in states[: max(0, len(states) - total_limit)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def make_accelerator(args: TrainArguments) -> Accelerator:
    report_to = None if args.report_to == "none" else args.report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            logger.warning("tensorboard is not installed: no tracker (pip install 'affect-hf[tensorboard]')")
            report_to = None
    return Accelerator(
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_dir=args.output_dir,
        # A sampler seeded by (seed, epoch): the resumed epoch visits the samples in the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def train(args: TrainArguments) -> dict:
    """Train EMMA; the best model by P_MTL is saved under `output_dir/best_model`.

    Returns the trainer state: `best_scores`, `best_epoch`, `global_step` and the per-epoch `history`.
    """
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("affect_hf").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)

    model = build_model(args)
    if model.cnn is not None:
        # oneDNN's convolutions are fastest on NHWC; the saved weights are the same numbers either way.
        model.cnn.to(memory_format=torch.channels_last)
    image_size = model.config.image_size
    train_split = load_abaw_mtl(args.data_dir, "train")
    eval_split = load_abaw_mtl(args.data_dir, "validation")
    if args.max_train_samples is not None:
        train_split = train_split.select(range(min(args.max_train_samples, len(train_split))))
    if args.max_eval_samples is not None:
        eval_split = eval_split.select(range(min(args.max_eval_samples, len(eval_split))))
    if args.au_pos_weight == "data":
        model.config.au_pos_weight = au_pos_weight_from_labels(np.asarray(train_split["action_units"]))

    train_dataset = AbawMtlTorchDataset(train_split, image_size=image_size, train=True, seed=args.seed)
    eval_dataset = AbawMtlTorchDataset(eval_split, image_size=image_size, train=False, seed=args.seed)
    # Each loader draws its workers' base seed from its own generator, not from the global RNG: otherwise
    # re-creating the loader on resume would shift the random stream that dropout and drop path use.
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_dataloader = DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        shuffle=False,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(train_dataloader) == 0:
        raise ValueError(
            f"the training split ({len(train_dataset)} samples) is smaller than one batch "
            f"({args.per_device_train_batch_size})"
        )

    effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    learning_rate = args.learning_rate or args.base_learning_rate * effective_batch / 256
    parameter_groups = layer_decay_parameter_groups(
        model, learning_rate, args.weight_decay, args.layer_decay, model.config.vit_config.num_hidden_layers
    )
    optimizer = torch.optim.AdamW(parameter_groups, lr=learning_rate, betas=(0.9, 0.999))

    # Count steps on the prepared loader: it holds this process's share of the batches.
    train_dataloader, eval_dataloader = accelerator.prepare(train_dataloader, eval_dataloader)
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    # Accelerate steps a prepared scheduler once per process at each optimiser step: size it in those units.
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(args.warmup_epochs * steps_per_epoch) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
        min_lr_rate=min(1.0, args.min_learning_rate / learning_rate),
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    trainer_state = {
        "global_step": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "best_score": None,
        "best_epoch": None,
        "best_scores": None,
        "history": [],
    }
    if args.resume_from_checkpoint:
        state_path = (
            find_latest_state(output_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if state_path is None or not (state_path / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(f"no training state to resume from: {args.resume_from_checkpoint} in {output_dir}")
        accelerator.load_state(str(state_path))
        with open(state_path / TRAINER_STATE_FILE, encoding="utf-8") as handle:
            trainer_state = json.load(handle)
        logger.info("resumed from %s at step %d", state_path, trainer_state["global_step"])

    run_config = {k: v for k, v in dataclasses.asdict(args).items() if k != "hub_token"}
    tracker_config = {key: value for key, value in run_config.items() if isinstance(value, (int, float, str, bool))}
    accelerator.init_trackers("emma", config=tracker_config)
    progress = tqdm(
        total=max_steps,
        initial=trainer_state["global_step"],
        desc="training",
        disable=not accelerator.is_local_main_process,
    )
    save_steps = args.save_steps if args.save_steps > 0 else None
    if args.eval_on_start and trainer_state["global_step"] == 0:
        scores, _ = evaluate_model(model, eval_dataloader, accelerator, unwrapped.config.au_thresholds)
        trainer_state["history"].append({"epoch": -1, "step": 0, **scores})
        accelerator.log({f"eval/{name}": value for name, value in scores.items()}, step=0)

    for epoch in range(trainer_state["epoch"], num_epochs):
        if trainer_state["global_step"] >= max_steps:
            break
        model.train()
        train_dataset.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        skipped = trainer_state["batches_in_epoch"] if epoch == trainer_state["epoch"] else 0
        batches = accelerator.skip_first_batches(train_dataloader, skipped) if skipped else train_dataloader
        trainer_state["epoch"], trainer_state["batches_in_epoch"] = epoch, skipped
        for batch in batches:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            trainer_state["batches_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            trainer_state["global_step"] += 1
            step = trainer_state["global_step"]
            progress.update(1)
            if step % args.logging_steps == 0 or step == max_steps:
                logs = {
                    "train/loss": outputs.loss.item(),
                    "train/va_loss": outputs.va_loss.item(),
                    "train/expression_loss": outputs.expression_loss.item(),
                    "train/au_loss": outputs.au_loss.item(),
                    "train/learning_rate": scheduler.get_last_lr()[-1],
                }
                accelerator.log(logs, step=step)
                progress.set_postfix(loss=f"{logs['train/loss']:.3f}")
            if save_steps and step % save_steps == 0 and step < max_steps:
                save_training_state(accelerator, output_dir, trainer_state, args.save_total_limit)
            if step >= max_steps:
                break

        scores, fitted_thresholds = evaluate_model(model, eval_dataloader, accelerator, unwrapped.config.au_thresholds)
        accelerator.log({f"eval/{name}": value for name, value in scores.items()}, step=trainer_state["global_step"])
        trainer_state["history"].append(
            {
                "epoch": epoch,
                "step": trainer_state["global_step"],
                "learning_rate": scheduler.get_last_lr()[-1],
                **scores,
            }
        )
        if accelerator.is_main_process:
            logger.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in scores.items() if k.startswith("P_")})
        score = scores[SELECTION_SCORE]
        if math.isnan(score):
            logger.warning("epoch %d: %s is NaN; this epoch cannot become the best model", epoch, SELECTION_SCORE)
        elif trainer_state["best_score"] is None or score > trainer_state["best_score"]:
            trainer_state.update(best_score=score, best_epoch=epoch, best_scores=scores)
            save_best_model(accelerator, unwrapped, output_dir, scores, fitted_thresholds, run_config, args)
        trainer_state["epoch"], trainer_state["batches_in_epoch"] = epoch + 1, 0
        save_training_state(accelerator, output_dir, trainer_state, args.save_total_limit)

    progress.close()
    if accelerator.is_main_process:
        write_text_atomically(output_dir / "training_history.json", json.dumps(trainer_state, indent=2))
        if trainer_state["best_score"] is None:
            logger.warning("no epoch had a finite %s: nothing saved as %s", SELECTION_SCORE, BEST_MODEL_DIR)
        elif args.push_to_hub:
            url = push_folder_to_hub(
                output_dir / BEST_MODEL_DIR,
                args.hub_model_id,
                token=args.hub_token,
                private=args.hub_private_repo,
                commit_message=f"EMMA, best {SELECTION_SCORE} {trainer_state['best_score']:.4f}",
            )
            logger.info("pushed %s", url)
    accelerator.wait_for_everyone()
    # Last: in distributed runs this also tears down the process group.
    accelerator.end_training()
    return trainer_state


def save_best_model(
    accelerator: Accelerator,
    model: EmmaForAffectAnalysis,
    output_dir: Path,
    scores: dict[str, float],
    fitted_thresholds: np.ndarray,
    run_config: dict,
    args: TrainArguments,
) -> None:
    if not accelerator.is_main_process:
        return
    thresholds = model.config.au_thresholds
    note = "AU decisions at the config's thresholds."
    if args.fit_au_thresholds:
        model.config.au_thresholds = [float(value) for value in fitted_thresholds]
        note = (
            "AU thresholds were fitted on this validation split (P_AU_fitted_thresholds): the scores at those "
            "thresholds are optimistic."
        )
    card = render_model_card(
        model,
        scores=scores,
        training_arguments=run_config,
        repo_id=args.hub_model_id,
        data_dir=os.path.basename(os.path.abspath(args.data_dir)),
        data_note=note,
    )
    save_model_folder(model, output_dir / BEST_MODEL_DIR, card)
    model.config.au_thresholds = thresholds
