"""The models: ViT backbone, DAN, EMMA; their forward contracts, losses, freezing, saving and loading."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

import affect_hf  # noqa: F401  (registers the Auto classes)
from affect_hf.modeling import (
    CotexConfig,
    CotexForImageClassification,
    DanConfig,
    DanForImageClassification,
    EmmaConfig,
    EmmaForAffectAnalysis,
    MaeViTModel,
)


IMAGE_SIZE = 32
TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=IMAGE_SIZE,
    patch_size=8,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
TINY_CNN = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], image_size=IMAGE_SIZE)
NUM_PATCHES = (IMAGE_SIZE // 8) ** 2


def tiny_emma_config(**overrides) -> EmmaConfig:
    fields = dict(vit_config=dict(TINY_VIT), cnn_config=dict(TINY_CNN), head_hidden_size=16, va_head_hidden_size=8)
    fields.update(overrides)
    return EmmaConfig(**fields)


def tiny_emma_with_visible_heads(seed: int = 0, **overrides) -> EmmaForAffectAnalysis:
    """A tiny EMMA in eval mode whose shared head is scaled up, so that its outputs differ visibly between faces
    and frames (a fresh head's scores all sit near chance) and its decisions do not hang on rounding."""
    torch.manual_seed(seed)
    model = EmmaForAffectAnalysis(tiny_emma_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(8)
    return model


def labelled_batch(batch_size: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "valence_arousal": torch.rand(batch_size, 2, generator=generator) * 2 - 1,
        "expression": torch.randint(0, 8, (batch_size,), generator=generator),
        "action_units": torch.randint(0, 2, (batch_size, 12), generator=generator),
    }


@pytest.fixture(scope="module")
def mae_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mae")
    ViTMAEForPreTraining(ViTMAEConfig(**TINY_VIT)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dan_folder(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("dan")
    DanForImageClassification(DanConfig(**TINY_CNN)).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- ViT backbone


def test_backbone_loads_mae_checkpoint_and_matches_vitmae_in_raster_order(mae_folder):
    backbone = MaeViTModel.from_pretrained(mae_folder).eval()
    reference_config = ViTMAEConfig.from_pretrained(mae_folder)
    reference_config.mask_ratio = 0.0
    reference = ViTMAEModel.from_pretrained(mae_folder, config=reference_config).eval()
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    raster = torch.arange(NUM_PATCHES).expand(2, NUM_PATCHES).float()
    with torch.no_grad():
        expected = reference(pixel_values, noise=raster).last_hidden_state
        rng_before = torch.get_rng_state()
        output = backbone(pixel_values)
        assert torch.equal(torch.get_rng_state(), rng_before), "mask_ratio=0 must not consume random numbers"
    torch.testing.assert_close(output.last_hidden_state, expected)
    torch.testing.assert_close(output.pooler_output, expected[:, 0])
    assert output.mask is None


def test_backbone_mask_ratio_drops_patches_per_call(mae_folder):
    backbone = MaeViTModel.from_pretrained(mae_folder).eval()
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    output = backbone(pixel_values, mask_ratio=0.75)
    kept = int(NUM_PATCHES * 0.25)
    assert output.last_hidden_state.shape == (3, 1 + kept, 32)
    assert output.mask.shape == (3, NUM_PATCHES)
    assert (output.mask.sum(dim=1) == NUM_PATCHES - kept).all()
    # Passing the same kept patches explicitly (in raster order) gives the same class token: attention does not
    # depend on the order of the tokens, only on their position embeddings.
    keep = (output.mask == 0).nonzero()[:, 1].view(3, kept)
    explicit = backbone(pixel_values, patch_keep_indices=keep)
    torch.testing.assert_close(explicit.pooler_output, output.pooler_output)
    assert not torch.allclose(output.pooler_output, backbone(pixel_values).pooler_output)
    with pytest.raises(ValueError, match="mask_ratio"):
        backbone(pixel_values, mask_ratio=1.0)


def test_drop_path_rises_linearly_and_acts_only_in_training():
    backbone = MaeViTModel(ViTMAEConfig(**dict(TINY_VIT, num_hidden_layers=3)), drop_path_rate=0.5)
    assert [layer.drop_path.drop_prob for layer in backbone.layers] == pytest.approx([0.0, 0.25, 0.5])
    pixel_values = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE)
    backbone.eval()
    torch.testing.assert_close(backbone(pixel_values).pooler_output, backbone(pixel_values).pooler_output)
    backbone.train()
    torch.manual_seed(0)
    first = backbone(pixel_values).pooler_output
    torch.manual_seed(1)
    second = backbone(pixel_values).pooler_output
    assert not torch.allclose(first, second)


def test_mean_pooling_uses_a_fresh_norm_and_freezes_the_pretrained_one():
    backbone = MaeViTModel(ViTMAEConfig(**TINY_VIT), pooling="mean").eval()
    assert not backbone.layernorm.weight.requires_grad
    output = backbone(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    expected = backbone.fc_norm(output.last_hidden_state[:, 1:].mean(dim=1))
    torch.testing.assert_close(output.pooler_output, expected)
    with pytest.raises(ValueError, match="pooling"):
        MaeViTModel(ViTMAEConfig(**TINY_VIT), pooling="max")


def test_backbone_rejects_other_image_sizes_unless_interpolating():
    backbone = MaeViTModel(ViTMAEConfig(**TINY_VIT)).eval()
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        backbone(torch.randn(1, 3, 48, 48))
    assert backbone(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True).last_hidden_state.shape == (1, 37, 32)


# ---------------------------------------------------------------- DAN


def test_dan_forward_and_round_trip(dan_folder):
    model = DanForImageClassification.from_pretrained(dan_folder).eval()
    assert model.config.id2label[1] == "Happy" and model.config.num_labels == 8
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    output = model(pixel_values, labels=torch.tensor([2, -1, 5]))
    assert output.logits.shape == (3, 8) and output.features.shape == (3, 32)
    expected_cross_entropy = torch.nn.functional.cross_entropy(output.logits[[0, 2]], torch.tensor([2, 5]))
    torch.testing.assert_close(output.cross_entropy_loss, expected_cross_entropy)
    torch.testing.assert_close(output.loss, output.cross_entropy_loss + output.affinity_loss + output.partition_loss)
    reloaded = AutoModel.from_pretrained(dan_folder).eval()
    assert isinstance(reloaded, DanForImageClassification)
    torch.testing.assert_close(reloaded(pixel_values).logits, output.logits, rtol=0, atol=0)
    torch.testing.assert_close(reloaded.class_centers, model.class_centers, rtol=0, atol=0)


def test_dan_losses_reproduce_dans_own_formulas():
    """DAN's `AffinityLoss` (distance matrix by addmm, masked to the own class) and `PartitionLoss`, written out."""
    torch.manual_seed(0)
    model = DanForImageClassification(DanConfig(**TINY_CNN)).train()
    pixel_values, labels = torch.randn(5, 3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([0, 3, 3, 7, 1])
    feature_maps, head_outputs = [], []
    model.resnet.register_forward_hook(lambda module, inputs, output: feature_maps.append(output.last_hidden_state))
    for head in model.heads:
        head.register_forward_hook(lambda module, inputs, output: head_outputs.append(output))
    output = model(pixel_values, labels=labels)

    features, centers = feature_maps[0].mean(dim=(2, 3)), model.class_centers
    distances = features.pow(2).sum(1, keepdim=True).expand(5, 8) + centers.pow(2).sum(1, keepdim=True).expand(8, 5).t()
    distances = distances.addmm(features, centers.t(), beta=1, alpha=-2)
    mask = labels.unsqueeze(1).expand(5, 8).eq(torch.arange(8).expand(5, 8))
    expected_affinity = (distances * mask.float() / centers.var(dim=0).sum()).clamp(min=1e-12, max=1e12).sum() / 5
    torch.testing.assert_close(output.affinity_loss, expected_affinity, rtol=1e-4, atol=1e-5)

    heads = torch.log_softmax(torch.stack(head_outputs, dim=1), dim=1)
    expected_partition = torch.log(1 + 4 / (heads.var(dim=1).mean() + torch.finfo(torch.float32).eps))
    torch.testing.assert_close(output.partition_loss, expected_partition)
    output.loss.backward()
    assert model.class_centers.grad is not None and model.class_centers.grad.abs().sum() > 0


# ---------------------------------------------------------------- EMMA


def test_emma_config_accepts_plain_dicts_and_validates_au_lists():
    config = tiny_emma_config()
    assert isinstance(config.vit_config, ViTMAEConfig) and isinstance(config.cnn_config, DanConfig)
    assert config.vit_config.hidden_size == 32 and config.cnn_config.hidden_sizes == [8, 16, 16, 32]
    assert config.id2label[0] == "Neutral" and config.id2label[7] == "Other"
    assert config.au_names[0] == "AU1" and len(config.au_thresholds) == 12
    with pytest.raises(ValueError, match="one entry per action unit"):
        tiny_emma_config(au_thresholds=[0.5] * 11)


def test_emma_forward_contract():
    model = EmmaForAffectAnalysis(tiny_emma_config()).eval()
    batch = labelled_batch(4)
    output = model(**batch)
    assert output.logits.shape == (4, 8)
    assert output.valence_arousal.shape == (4, 2)
    assert output.au_logits.shape == (4, 12)
    assert output.cnn_logits.shape == (4, 8)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    weighted = output.va_loss + output.expression_loss + output.au_loss
    torch.testing.assert_close(output.loss, weighted)
    assert model(batch["pixel_values"]).loss is None


def test_emma_loss_ignores_exactly_the_missing_labels():
    """Rows whose labels are all missing codes change nothing; a partly missing row counts only its valid parts."""
    model = EmmaForAffectAnalysis(tiny_emma_config(au_pos_weight=[2.0] * 12)).eval()
    batch = labelled_batch(6)
    missing = copy.deepcopy(batch)
    missing["valence_arousal"][[1, 4]] = -5.0
    missing["expression"][[1, 4]] = -1
    missing["action_units"][[1, 4]] = -1
    valid_rows = [0, 2, 3, 5]
    full = model(**missing)
    subset = model(**{key: value[valid_rows] for key, value in batch.items()})
    torch.testing.assert_close(full.va_loss, subset.va_loss)
    torch.testing.assert_close(full.expression_loss, subset.expression_loss)
    torch.testing.assert_close(full.au_loss, subset.au_loss)

    # One missing AU entry: the BCE is the pos-weighted mean over the 6 * 12 - 1 labelled entries.
    one_missing = copy.deepcopy(batch)
    one_missing["action_units"][0, 3] = -1
    output = model(**one_missing)
    logits, targets = output.au_logits, one_missing["action_units"].float()
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0), pos_weight=torch.full((12,), 2.0), reduction="none"
    )
    valid = one_missing["action_units"] != -1
    torch.testing.assert_close(output.au_loss, per_entry[valid].mean())


def test_emma_loss_with_no_valid_label_is_zero_not_nan():
    model = EmmaForAffectAnalysis(tiny_emma_config()).eval()
    batch = labelled_batch(3)
    batch["valence_arousal"][:] = -5.0
    batch["expression"][:] = -1
    batch["action_units"][:] = -1
    output = model(**batch)
    assert output.loss.item() == 0.0
    output.loss.backward()  # still part of the graph


def test_cnn_stays_frozen_and_in_eval_mode_while_training():
    model = EmmaForAffectAnalysis(tiny_emma_config())
    model.train()
    assert model.training and model.vit.training and not model.cnn.training
    assert not any(parameter.requires_grad for parameter in model.cnn.parameters())
    cnn_state = {key: value.clone() for key, value in model.cnn.state_dict().items()}
    va_head_before = model.va_head[0].weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for seed in range(3):
        model(**labelled_batch(4, seed)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for key, value in model.cnn.state_dict().items():
        assert torch.equal(value, cnn_state[key]), f"{key} moved"
    assert not torch.equal(model.va_head[0].weight, va_head_before), "the trainable heads must have moved"


def test_va_head_without_cnn_scores_is_the_ablation():
    model = EmmaForAffectAnalysis(tiny_emma_config(use_cnn_scores=False)).eval()
    assert model.cnn is None and model.va_head[0].in_features == 20
    output = model(**labelled_batch(3))
    assert output.cnn_logits is None and output.valence_arousal.shape == (3, 2)


def test_emma_from_separately_saved_parts(mae_folder, dan_folder):
    model = EmmaForAffectAnalysis.from_pretrained_parts(mae_folder, dan_folder, head_hidden_size=16)
    mae = ViTMAEForPreTraining.from_pretrained(mae_folder)
    dan = DanForImageClassification.from_pretrained(dan_folder)
    torch.testing.assert_close(model.vit.layers[1].mlp.fc2.weight, mae.vit.layers[1].mlp.fc2.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.vit.embeddings.cls_token, mae.vit.embeddings.cls_token, rtol=0, atol=0)
    for key, value in dan.state_dict().items():
        assert torch.equal(model.cnn.state_dict()[key], value)
    assert model.config.vit_config.mask_ratio == 0.0 and model.config.head_hidden_size == 16


def test_save_and_load_round_trip_keeps_outputs_and_vitmae_weight_names(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    model = EmmaForAffectAnalysis(tiny_emma_config()).eval()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    # The ViT part is stored under ViTMAEForPreTraining's own names.
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "cnn.resnet.embedder.embedder.convolution.weight" in keys and "va_head.0.weight" in keys
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.auto_map["AutoModelForImageClassification"] == "modeling_emma.EmmaForAffectAnalysis"
    batch = labelled_batch(3)
    for attn_implementation in (None, "sdpa", {"vit_config": "sdpa"}, "eager"):
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        reloaded = AutoModel.from_pretrained(tmp_path, **kwargs).eval()
        assert isinstance(reloaded, EmmaForAffectAnalysis)
        expected, actual = model(**batch), reloaded(**batch)
        for name in ("logits", "valence_arousal", "au_logits", "cnn_logits", "loss"):
            torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=1e-5, atol=1e-6)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    output = eager(batch["pixel_values"], output_attentions=True, output_hidden_states=True)
    assert len(output.attentions) == 2 and output.attentions[0].shape == (3, 2, NUM_PATCHES + 1, NUM_PATCHES + 1)
    assert len(output.hidden_states) == 3


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = EmmaForAffectAnalysis(tiny_emma_config(drop_path_rate=0.0)).train()
    batch = labelled_batch(4)
    model(**batch).loss.backward()
    plain = model.vit.layers[0].attention.q_proj.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.vit.layers[0].gradient_checkpointing
    model(**batch).loss.backward()
    torch.testing.assert_close(model.vit.layers[0].attention.q_proj.weight.grad, plain)


# ---------------------------------------------------------------- CoTEX


def tiny_cotex_config(**overrides) -> CotexConfig:
    fields = dict(vit_config=dict(TINY_VIT), drop_path_rate=0.0, head_initializer_range=0.5)
    fields.update(overrides)
    return CotexConfig(**fields)


def authors_cotex_loss(view_logits: list[torch.Tensor], labels: torch.Tensor, js_weight: float = 100.0):
    """The CoTEX authors' loss (`EmoCoT_loss` with `GeneralizedJSDiv`), written out independently."""
    eps, weight = 1e-4, 1 / len(view_logits)
    valid = labels != -1
    cross_entropy = sum(
        torch.nn.functional.cross_entropy(logits[valid], labels[valid]) for logits in view_logits
    ) / len(view_logits)
    probabilities = [torch.softmax(logits, dim=1) for logits in view_logits]
    mixture = sum(weight * p for p in probabilities).clamp(min=eps)

    def kl(target, prediction):
        output = target * (target.clamp(min=eps).log() - prediction.clamp(min=eps).log())
        return torch.where(target > 0, output, torch.zeros_like(output)).mean()

    js = sum(weight * kl(p, mixture) for p in probabilities)
    return cross_entropy + js_weight * js, cross_entropy, js


def test_cotex_loss_reproduces_the_authors_and_ignores_unlabelled_samples():
    torch.manual_seed(0)
    model = CotexForImageClassification(tiny_cotex_config(num_views=3)).train()
    pixel_values = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.tensor([0, 5, -1, 3, 2, -1])
    output = model(pixel_values, labels=labels)
    assert output.logits.shape == (6, 6) and output.view_logits.shape == (6, 3, 6)
    torch.testing.assert_close(output.logits, output.view_logits.mean(dim=1))
    views = list(output.view_logits.unbind(dim=1))
    expected, cross_entropy, js = authors_cotex_loss(views, labels)
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.cross_entropy_loss, cross_entropy)
    torch.testing.assert_close(output.js_loss, js)
    assert output.js_loss > 0, "differently masked views disagree"
    # "batchmean" is the textbook KL: classes summed, batch averaged.
    model.config.js_reduction = "batchmean"
    torch.manual_seed(1)
    first = model(pixel_values, labels=labels)
    model.config.js_reduction = "mean"
    torch.manual_seed(1)
    second = model(pixel_values, labels=labels)
    torch.testing.assert_close(first.js_loss, second.js_loss * 6)


def test_cotex_views_drop_their_own_patches_in_training_and_none_in_evaluation(mae_folder):
    model = CotexForImageClassification.from_pretrained_parts(str(mae_folder), drop_path_rate=0.0, mask_ratio=0.75)
    seen = []
    hooks = [view.register_forward_hook(lambda module, inputs, output: seen.append(output)) for view in model.views]
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.train()
    model(pixel_values)
    assert [output.last_hidden_state.shape[1] for output in seen] == [1 + NUM_PATCHES // 4] * 2, "kept quarter only"
    # Both views start from the same MAE: only their masks make their features differ.
    assert not torch.equal(seen[0].mask, seen[1].mask)
    assert not torch.allclose(seen[0].pooler_output, seen[1].pooler_output)

    seen.clear()
    model.eval()
    rng_before = torch.get_rng_state()
    evaluation = model(pixel_values)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [output.last_hidden_state.shape[1] for output in seen] == [1 + NUM_PATCHES] * 2
    torch.testing.assert_close(seen[0].pooler_output, seen[1].pooler_output, rtol=0, atol=0)
    torch.testing.assert_close(model(pixel_values).logits, evaluation.logits, rtol=0, atol=0)
    for hook in hooks:
        hook.remove()


def test_cotex_from_several_mae_folders_shares_views_in_order(mae_folder, tmp_path):
    torch.manual_seed(5)
    other = tmp_path / "other_mae"
    ViTMAEForPreTraining(ViTMAEConfig(**TINY_VIT)).save_pretrained(other)
    model = CotexForImageClassification.from_pretrained_parts([str(mae_folder), str(other)], num_views=4)
    first, second = (ViTMAEForPreTraining.from_pretrained(path) for path in (mae_folder, other))
    for index, source in enumerate((first, first, second, second)):
        assert torch.equal(model.views[index].layers[0].mlp.fc1.weight, source.vit.layers[0].mlp.fc1.weight)
    assert model.config.vit_config.mask_ratio == 0.0 and model.config.num_views == 4
    with pytest.raises(ValueError, match="3 views cannot be shared equally among 2"):
        CotexForImageClassification.from_pretrained_parts([str(mae_folder), str(other)], num_views=3)


def test_cotex_round_trip_through_automodel(tmp_path):
    torch.manual_seed(0)
    model = CotexForImageClassification(tiny_cotex_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, CotexForImageClassification) and reloaded.config.id2label[0] == "Anger"
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    config = AutoConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    with pytest.raises(ValueError, match="js_reduction"):
        tiny_cotex_config(js_reduction="sum")
