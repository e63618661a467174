"""Evaluation helpers shared by the recipes: whole-split predictions, in order, gathered across processes."""

from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..metrics import classification_scores


Extract = Callable[[object, dict], dict[str, torch.Tensor]]


@torch.no_grad()
def gather_predictions(
    model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator, extract: Extract
) -> dict[str, np.ndarray]:
    """`extract(outputs, batch)` for every batch of a prepared, unshuffled loader, concatenated in dataset order.

    `gather_for_metrics` drops the samples Accelerate repeats to even out the last batch across processes.
    """
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for batch in dataloader:
        outputs = model(pixel_values=batch["pixel_values"])
        extracted = extract(outputs, batch)
        gathered = accelerator.gather_for_metrics({name: value.float() for name, value in extracted.items()})
        for name, value in gathered.items():
            collected.setdefault(name, []).append(value.cpu().numpy())
    return {name: np.concatenate(values) for name, values in collected.items()}


def evaluate_classifier(
    model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator, class_names: tuple[str, ...]
) -> dict[str, float]:
    """Macro F1, accuracy and per-class F1 of `outputs.logits` against the batches' `labels`."""
    arrays = gather_predictions(
        model, dataloader, accelerator, lambda outputs, batch: {"logits": outputs.logits, "labels": batch["labels"]}
    )
    return classification_scores(arrays["logits"], arrays["labels"].astype(np.int64), class_names)
