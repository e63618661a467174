"""Optimiser parameter groups with layer-wise learning-rate decay (BEiT / MAE fine-tuning)."""

from torch import nn


# Parameters that carry no weight decay besides biases and norms (any 1-D parameter).
NO_WEIGHT_DECAY_SUFFIXES = ("cls_token", "position_embeddings")


def vit_layer_id(parameter_name: str, num_layers: int) -> int:
    """0 for the ViT embeddings, i + 1 for ViT layer i, num_layers + 1 for everything on top (norms, heads)."""
    if parameter_name.startswith("vit.embeddings."):
        return 0
    if parameter_name.startswith("vit.layers."):
        return int(parameter_name.split(".")[2]) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float, num_layers: int
) -> list[dict]:
    """Groups whose learning rate is `learning_rate * layer_decay ** (num_layers + 1 - layer_id)`.

    Frozen parameters (the CNN) are left out; 1-D parameters, the class token and position embeddings get no
    weight decay.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim == 1 or name.endswith(NO_WEIGHT_DECAY_SUFFIXES)
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
