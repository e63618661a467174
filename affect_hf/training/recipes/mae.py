"""The facial prior: a ViT pretrained as a masked auto-encoder on unlabeled faces (`ViTMAEForPreTraining`).

Defaults are MAE's (facebookresearch/mae `main_pretrain.py`, PRETRAIN.md): mask ratio 0.75, normalised-pixel
loss, random resized crop 0.2-1 (bicubic) + flip, AdamW betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 x
effective batch / 256, 40 warmup epochs then cosine to 0, per step, 800 epochs. Images stream from a folder, a list
or `.tar` shards (`affect_hf.data.streams`). Each evaluation scores the held-out faces with a fixed mask per image
(`eval_loss`) and draws a reconstruction figure; the last model is kept, as MAE does.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from ...data import AffectImageTransform, RandomResizedCropTransform
from ...data.streams import ImageSource, ImageStream, RecordDataset, readable_records
from ...data.transforms import IMAGE_MEAN, IMAGE_STD
from ...model_cards import MAE_TEMPLATE
from ..presets import config_from_preset
from .base import Evaluation, Recipe, RecipeData, data_folder_name
from .checks import check_model_folder


logger = logging.getLogger(__name__)

TRAIN_LIST_FILE, VALIDATION_LIST_FILE = "train_images.txt", "validation_images.txt"


@dataclass
class MaeArguments:
    data_dir: str = field(
        metadata={"help": "Unlabeled images: a folder tree, a text file of paths, or .tar shards (folder or glob)."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Held-out images (same kinds of source); default: set some aside."}
    )
    num_validation_images: int | None = field(
        default=None,
        metadata={
            "help": "Without --validation_dir: the first N images are held out, not trained on (default: 5%% of the "
            "source, at most 1000)."
        },
    )
    model_config: str = field(default="base", metadata={"help": "Preset (tiny, base) or a JSON file of ViTMAEConfig."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved ViTMAE folder to continue."})
    mask_ratio: float = 0.75
    norm_pix_loss: bool = field(default=True, metadata={"help": "Predict each patch's normalised pixels (MAE)."})
    num_reconstruction_images: int = field(
        default=8, metadata={"help": "Held-out faces drawn in each evaluation's reconstruction figure."}
    )

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.num_validation_images is not None and self.num_validation_images < 1 and self.validation_dir is None:
            raise ValueError("--num_validation_images must be at least 1 (or give --validation_dir)")


def held_out_count(total: int, requested: int | None) -> int:
    """How many of a source's first images are held out: as requested, or 5% (at most 1000, at least 1); a request
    that leaves less than half the source to train on is kept, with a warning."""
    if requested is None:
        return max(1, min(1000, total // 20))
    count = min(requested, total - 1)
    if count > total / 2:
        logger.warning("--num_validation_images %d holds out %d of the %d images: %d are left to train on", requested,
                       count, total, total - count)  # fmt: skip
    return count


class FixedMaskDataset(torch.utils.data.Dataset):
    """Held-out images with a fixed mask each: MAE's `noise`, drawn from (seed, image key), whatever the batching."""

    def __init__(self, images: RecordDataset, num_patches: int, seed: int):
        self.images, self.num_patches, self.seed = images, num_patches, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.images[index]
        rng = np.random.default_rng([self.seed, int(item["key"]), 0x3A5C])
        noise = torch.from_numpy(rng.random(self.num_patches, dtype=np.float32))
        return {"pixel_values": item["pixel_values"], "noise": noise}


def per_image_loss(model: ViTMAEForPreTraining, pixel_values: torch.Tensor, outputs) -> torch.Tensor:
    """ViTMAE's reconstruction loss (mean squared error over each image's masked patches), one value per image."""
    target = model.patchify(pixel_values)
    if model.config.norm_pix_loss:
        mean, variance = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (variance + 1.0e-6) ** 0.5
    errors = ((outputs.logits.float() - target.float()) ** 2).mean(dim=-1)
    return (errors * outputs.mask).sum(dim=1) / outputs.mask.sum(dim=1)


def reconstruction_figure(
    model: ViTMAEForPreTraining, pixel_values: torch.Tensor, noise: torch.Tensor, cell: int = 96
) -> PIL.Image.Image:
    """One row per image: original, masked, reconstruction, reconstruction with the visible patches pasted back."""
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, noise=noise)
    predicted = outputs.logits.float()
    if model.config.norm_pix_loss:  # back from each patch's normalised pixels, with the true patch's statistics
        target = model.patchify(pixel_values)
        predicted = predicted * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    reconstruction = model.unpatchify(predicted)
    patch = model.config.patch_size
    mask = outputs.mask.unsqueeze(-1).repeat(1, 1, patch * patch * model.config.num_channels)
    mask = model.unpatchify(mask)  # 1 where a patch was dropped
    columns = (
        pixel_values,
        pixel_values * (1 - mask),
        reconstruction,
        pixel_values * (1 - mask) + reconstruction * mask,
    )
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    rows = len(pixel_values)
    figure = PIL.Image.new("RGB", (cell * len(columns), cell * rows), (255, 255, 255))
    for column, images in enumerate(columns):
        pixels = ((images.cpu().float() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for row in range(rows):
            tile = PIL.Image.fromarray(pixels[row]).resize((cell, cell), PIL.Image.Resampling.NEAREST)
            figure.paste(tile, (column * cell, row * cell))
    return figure


class MaeRecipe(Recipe):
    name = "mae"
    description = "MAE pretraining of a ViT on unlabeled faces (the facial prior)"
    arguments_class = MaeArguments
    selection_score = None  # keep the last, as MAE pretraining does
    run_files: ClassVar[tuple[str, ...]] = (TRAIN_LIST_FILE, VALIDATION_LIST_FILE)
    card_template = MAE_TEMPLATE
    card_index_metrics = ()  # a reconstruction loss is no benchmark result
    card_tags = ("vit-mae", "masked-autoencoder", "faces", "affect", "facial-prior")
    card_pipeline_tag = None

    @classmethod
    def loop_defaults(cls, recipe_args) -> dict[str, Any]:
        return {
            "num_train_epochs": 800,
            "warmup_epochs": 40.0,
            "per_device_train_batch_size": 64,
            "gradient_accumulation_steps": 1,
            "base_learning_rate": 1.5e-4,
            "min_learning_rate": 0.0,
            "lr_schedule": "cosine",
            "weight_decay": 0.05,
            "adam_beta1": 0.9,
            "adam_beta2": 0.95,
            "max_grad_norm": 0.0,
        }

    def check_arguments(self) -> None:
        options = self.recipe_args
        if options.model_name_or_path and Path(options.model_name_or_path).is_dir():
            check_model_folder(options.model_name_or_path, ("vit_mae",), "--model_name_or_path")

    def build_model(self) -> ViTMAEForPreTraining:
        options = self.recipe_args
        overrides = {"mask_ratio": options.mask_ratio, "norm_pix_loss": options.norm_pix_loss}
        if options.model_name_or_path:
            return ViTMAEForPreTraining.from_pretrained(options.model_name_or_path, **overrides)
        return ViTMAEForPreTraining(config_from_preset(ViTMAEConfig, options.model_config, **overrides))

    def build_data(self, model: ViTMAEForPreTraining, accelerator: Accelerator) -> RecipeData:
        options, args = self.recipe_args, self.args
        size = model.config.image_size
        output_dir = Path(args.output_dir)
        with accelerator.main_process_first():  # the main process walks a folder source into its list first
            source = ImageSource(options.data_dir, output_dir / TRAIN_LIST_FILE)
            if options.validation_dir:
                held_out_source = ImageSource(options.validation_dir, output_dir / VALIDATION_LIST_FILE)
                limit = held_out_source.total if args.max_eval_samples is None else args.max_eval_samples
                held_out, set_aside = held_out_source.records(min(limit, held_out_source.total)), 0
            else:
                set_aside = held_out_count(source.total, options.num_validation_images)
                held_out, unreadable = readable_records(source.records(set_aside))
                if unreadable:  # images we chose to hold out: drop the broken ones, as training skips them
                    logger.warning(
                        "%d held-out images cannot be decoded and are left out: %s", len(unreadable), unreadable[:3]
                    )
                if args.max_eval_samples is not None:
                    held_out = held_out[: args.max_eval_samples]
        if not held_out:
            raise ValueError(f"no held-out image can be read (of {options.validation_dir or options.data_dir})")
        self.set_aside = set_aside
        stream = ImageStream(
            source, RandomResizedCropTransform(size), seed=args.seed, set_aside=set_aside,
            max_images=args.max_train_samples,
        )  # fmt: skip
        num_patches = (size // model.config.patch_size) ** 2
        evaluation = FixedMaskDataset(
            RecordDataset(held_out, AffectImageTransform(size, train=False)), num_patches, args.seed
        )
        return RecipeData(
            train=stream,
            evaluation=evaluation,
            description=f"{stream.describe()}; {len(evaluation)} held-out images",
        )

    def example_batch(self, model: ViTMAEForPreTraining, batch_size: int, generator: torch.Generator) -> dict:
        size = model.config.image_size
        return {"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator)}

    @torch.no_grad()
    def evaluate(self, model, dataloader, accelerator: Accelerator) -> Evaluation:
        model.eval()
        unwrapped = accelerator.unwrap_model(model)
        losses = []
        for batch in dataloader:
            outputs = model(pixel_values=batch["pixel_values"], noise=batch["noise"])
            losses.append(accelerator.gather_for_metrics(per_image_loss(unwrapped, batch["pixel_values"], outputs)))
        scores = {"eval_loss": float(torch.cat(losses).mean())}
        images = {}
        count = min(self.recipe_args.num_reconstruction_images, len(dataloader.dataset))
        if accelerator.is_main_process and count > 0:
            first = [dataloader.dataset[index] for index in range(count)]
            device = next(unwrapped.parameters()).device
            pixel_values = torch.stack([item["pixel_values"] for item in first]).to(device)
            noise = torch.stack([item["noise"] for item in first]).to(device)
            images["reconstruction"] = reconstruction_figure(unwrapped, pixel_values, noise)
        return Evaluation(scores=scores, images=images)

    def data_identity(self) -> dict[str, Any]:
        options = self.recipe_args
        held_out = (
            {"validation_dir": os.path.abspath(options.validation_dir)}
            if options.validation_dir
            else {"num_validation_images": options.num_validation_images}
        )
        return {**super().data_identity(), **held_out}

    def card_data_dir(self) -> str:
        return data_folder_name(self.recipe_args.validation_dir or self.recipe_args.data_dir)

    def card_note(self, evaluation: Evaluation | None) -> str:
        options = self.recipe_args
        held_out = options.validation_dir or f"the first {self.set_aside} images of the source"
        return f"Held out: {held_out}. Pretrained on {data_folder_name(options.data_dir)}."


__all__ = ["FixedMaskDataset", "MaeArguments", "MaeRecipe", "held_out_count", "per_image_loss", "reconstruction_figure"]
