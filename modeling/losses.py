"""Loss and agreement functions shared by the models (torch only: this file travels to the Hub)."""

import torch
from torch import nn

from .affect_labels import MISSING_ACTION_UNIT, MISSING_EXPRESSION, MISSING_VALENCE_AROUSAL


def concordance_correlation_coefficient(
    predictions: torch.Tensor, targets: torch.Tensor, dim: int = 0, eps: float = 0.0
) -> torch.Tensor:
    """Lin's concordance correlation coefficient with population (biased) statistics, as ABAW scores it.

    `eps` guards the denominator when used as a loss on tiny batches; metrics keep it at 0.
    """
    prediction_mean = predictions.mean(dim)
    target_mean = targets.mean(dim)
    prediction_variance = predictions.var(dim, unbiased=False)
    target_variance = targets.var(dim, unbiased=False)
    covariance = ((predictions - prediction_mean.unsqueeze(dim)) * (targets - target_mean.unsqueeze(dim))).mean(dim)
    return 2 * covariance / (prediction_variance + target_variance + (prediction_mean - target_mean) ** 2 + eps)


def masked_ccc_loss(predictions: torch.Tensor, targets: torch.Tensor, missing_value: float) -> torch.Tensor:
    """1 - CCC over the entries whose target is not `missing_value`; 0 (still in the graph) with < 2 valid."""
    valid = targets != missing_value
    if valid.sum() < 2:
        return predictions.sum() * 0.0
    ccc = concordance_correlation_coefficient(predictions[valid].float(), targets[valid].float(), eps=1e-8)
    return 1.0 - ccc


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, missing_value: int) -> torch.Tensor:
    """Mean cross-entropy over labelled samples; 0 (still in the graph) when none is labelled."""
    valid = labels != missing_value
    if not valid.any():
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits[valid].float(), labels[valid].long())


def masked_binary_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, missing_value: int, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean pos-weighted binary cross-entropy over the labelled (sample, class) entries only."""
    valid = (labels != missing_value).float()  # float32 even under autocast: bf16 cannot count past 256 exactly
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), (labels == 1).float(), weight=valid, pos_weight=pos_weight, reduction="sum"
    )
    return losses / valid.sum().clamp(min=1.0)


def affect_task_losses(
    config, predicted_va: torch.Tensor, expression_logits: torch.Tensor, au_logits: torch.Tensor,
    valence_arousal: torch.Tensor | None = None, expression: torch.Tensor | None = None,
    action_units: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """EMMA's multi-task loss over N answers (N x 2, N x classes, N x AUs): (the sum weighted by the config's
    `*_loss_weight`, the VA, expression and AU losses), each over its labelled entries only; None for a task
    without targets. The config's `au_pos_weight` is read at each call, so updating the config updates the loss."""
    va_loss = expression_loss = au_loss = None
    terms = []
    if valence_arousal is not None:
        va_loss = masked_ccc_loss(predicted_va[:, 0], valence_arousal[:, 0], MISSING_VALENCE_AROUSAL)
        va_loss = va_loss + masked_ccc_loss(predicted_va[:, 1], valence_arousal[:, 1], MISSING_VALENCE_AROUSAL)
        terms.append(config.va_loss_weight * va_loss)
    if expression is not None:
        expression_loss = masked_cross_entropy(expression_logits, expression, MISSING_EXPRESSION)
        terms.append(config.expression_loss_weight * expression_loss)
    if action_units is not None:
        pos_weight = torch.tensor(config.au_pos_weight, device=au_logits.device)
        au_loss = masked_binary_cross_entropy(au_logits, action_units, MISSING_ACTION_UNIT, pos_weight)
        terms.append(config.au_loss_weight * au_loss)
    loss = torch.stack(terms).sum() if terms else None
    return loss, va_loss, expression_loss, au_loss


def generalized_js_divergence(
    logits_per_view: list[torch.Tensor], reduction: str = "mean", probability_floor: float = 1e-4
) -> torch.Tensor:
    """Jensen-Shannon divergence of several predicted distributions: the mean KL of each to their mixture.

    `reduction="mean"` averages each KL term over batch x classes (the CoTEX authors' code, whose weight 100
    assumes it); "batchmean" sums over classes and averages over the batch. Probabilities are clamped at
    `probability_floor` inside the logarithms, as the authors do.
    """
    probabilities = [nn.functional.softmax(logits.float(), dim=-1) for logits in logits_per_view]
    mixture = torch.stack(probabilities).mean(dim=0).clamp(min=probability_floor)
    terms = []
    for view in probabilities:
        divergence = view * (view.clamp(min=probability_floor).log() - mixture.log())
        divergence = torch.where(view > 0, divergence, torch.zeros_like(divergence))
        terms.append(divergence.mean() if reduction == "mean" else divergence.sum(dim=-1).mean())
    return torch.stack(terms).mean()
