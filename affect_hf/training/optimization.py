"""Optimiser parameter groups (weight decay, layer-wise lr decay for ViT fine-tuning) and learning-rate schedules."""

import math
import re

import torch
from torch import nn
from transformers.optimization import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup


# Parameters that carry no weight decay besides biases and norms (any 1-D parameter).
NO_WEIGHT_DECAY_SUFFIXES = ("cls_token", "position_embeddings", "mask_token")
# A ViT backbone inside a model: EMMA's `vit`, CoTEX's `views.<i>`; group 1 is `embeddings` or `layers.<i>`.
VIT_BACKBONE_PATTERN = re.compile(r"^(?:vit|views\.\d+)\.(embeddings|layers\.(\d+))\.")


def has_no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim == 1 or name.endswith(NO_WEIGHT_DECAY_SUFFIXES)


def vit_layer_id(parameter_name: str, num_layers: int) -> int:
    """0 for the ViT embeddings, i + 1 for ViT layer i, num_layers + 1 for everything on top (norms, heads)."""
    match = VIT_BACKBONE_PATTERN.match(parameter_name)
    if match is None:
        return num_layers + 1
    return 0 if match.group(1) == "embeddings" else int(match.group(2)) + 1


def layer_decay_parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float, num_layers: int
) -> list[dict]:
    """Groups whose learning rate is `learning_rate * layer_decay ** (num_layers + 1 - layer_id)` (BEiT / MAE).

    Frozen parameters (EMMA's CNN) are left out; 1-D parameters, the class token and position embeddings get no
    weight decay. Several ViT backbones (CoTEX's views) share the groups of their depth.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = has_no_weight_decay(name, parameter)
        layer_id = vit_layer_id(name, num_layers)
        scale = layer_decay ** (num_layers + 1 - layer_id)
        group = groups.setdefault(
            (layer_id, no_decay),
            {
                "params": [],
                "names": [],
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def weight_decay_parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float) -> list[dict]:
    """Two groups, with and without weight decay (biases, norms, tokens and position embeddings)."""
    groups = [
        {"params": [], "names": [], "lr": learning_rate, "lr_scale": 1.0, "weight_decay": weight_decay},
        {"params": [], "names": [], "lr": learning_rate, "lr_scale": 1.0, "weight_decay": 0.0},
    ]
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = groups[has_no_weight_decay(name, parameter)]
            group["params"].append(parameter)
            group["names"].append(name)
    return [group for group in groups if group["params"]]


def build_schedule(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    steps_per_epoch: int,
    min_lr_rate: float = 0.0,
    gamma: float = 0.6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule, stepped once per optimiser step, multiplying each group's own rate.

    cosine: linear warmup, then cosine down to `min_lr_rate` x peak (MAE, EMMA, CoTEX). exponential: the rate
    times `gamma` after each epoch (DAN). constant: the peak after the warmup.
    """
    if kind == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, min_lr_rate=min_lr_rate
        )
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps)
    if kind == "exponential":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, ExponentialDecay(warmup_steps, steps_per_epoch, gamma))
    raise ValueError(f"unknown schedule {kind!r}")


class ExponentialDecay:
    """Linear warmup, then `gamma ** completed_epochs` (a class, not a lambda, so a scheduler state pickles)."""

    def __init__(self, warmup_steps: int, steps_per_epoch: int, gamma: float):
        self.warmup_steps, self.steps_per_epoch, self.gamma = warmup_steps, max(1, steps_per_epoch), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return self.gamma ** math.floor(step / self.steps_per_epoch)
