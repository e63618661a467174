"""Converting the paper's and MAE's checkpoints: every tensor lands where it should, and the converted models give
the numbers of an independent computation of the source models (written here from timm's, MAE's, torchvision's and
DAN's code, on the raw tensors)."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTMAEForPreTraining

from affect_hf.cli import main as cli_main
from affect_hf.convert import CheckpointError, convert, convert_to_folder, detect_kind
from affect_hf.modeling import (
    CotexForImageClassification,
    DanForImageClassification,
    EmmaForAffectAnalysis,
    MaeViTModel,
)


HIDDEN, HEADS, MLP, PATCH, IMAGE, LAYERS = 32, 2, 64, 8, 32, 2
DECODER_HIDDEN, DECODER_HEADS, DECODER_MLP = 16, 2, 32
DAN_WIDTHS, DAN_STEM = (8, 16, 16, 32), 8


def _randn(generator, *shape, scale=0.2):
    return torch.randn(*shape, generator=generator) * scale


# ------------------------------------------------------------------------------------------ source checkpoints


def timm_vit_state(generator, prefix="", image=IMAGE, head=None, fc_norm=False, norm=True, decoder=False) -> dict:
    """A timm / MAE ViT's tensors under their own names and shapes."""
    grid = image // PATCH
    state = {
        "cls_token": _randn(generator, 1, 1, HIDDEN),
        "pos_embed": _randn(generator, 1, grid * grid + 1, HIDDEN),
        "patch_embed.proj.weight": _randn(generator, HIDDEN, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": _randn(generator, HIDDEN),
    }
    for layer in range(LAYERS):
        state.update(_timm_block(generator, f"blocks.{layer}.", HIDDEN, MLP))
    if norm:
        state.update({"norm.weight": 1 + _randn(generator, HIDDEN), "norm.bias": _randn(generator, HIDDEN)})
    if fc_norm:
        state.update({"fc_norm.weight": 1 + _randn(generator, HIDDEN), "fc_norm.bias": _randn(generator, HIDDEN)})
    if head is not None:
        state.update({"head.weight": _randn(generator, head, HIDDEN), "head.bias": _randn(generator, head)})
    if decoder:
        state.update(
            {
                "mask_token": _randn(generator, 1, 1, DECODER_HIDDEN),
                "decoder_pos_embed": _randn(generator, 1, grid * grid + 1, DECODER_HIDDEN),
                "decoder_embed.weight": _randn(generator, DECODER_HIDDEN, HIDDEN),
                "decoder_embed.bias": _randn(generator, DECODER_HIDDEN),
                "decoder_norm.weight": 1 + _randn(generator, DECODER_HIDDEN),
                "decoder_norm.bias": _randn(generator, DECODER_HIDDEN),
                "decoder_pred.weight": _randn(generator, PATCH * PATCH * 3, DECODER_HIDDEN),
                "decoder_pred.bias": _randn(generator, PATCH * PATCH * 3),
                **_timm_block(generator, "decoder_blocks.0.", DECODER_HIDDEN, DECODER_MLP),
            }
        )
    return {prefix + key: value for key, value in state.items()}


def _timm_block(generator, prefix, width, mlp) -> dict:
    return {
        prefix + "norm1.weight": 1 + _randn(generator, width),
        prefix + "norm1.bias": _randn(generator, width),
        prefix + "attn.qkv.weight": _randn(generator, 3 * width, width),
        prefix + "attn.qkv.bias": _randn(generator, 3 * width),
        prefix + "attn.proj.weight": _randn(generator, width, width),
        prefix + "attn.proj.bias": _randn(generator, width),
        prefix + "norm2.weight": 1 + _randn(generator, width),
        prefix + "norm2.bias": _randn(generator, width),
        prefix + "mlp.fc1.weight": _randn(generator, mlp, width),
        prefix + "mlp.fc1.bias": _randn(generator, mlp),
        prefix + "mlp.fc2.weight": _randn(generator, width, mlp),
        prefix + "mlp.fc2.bias": _randn(generator, width),
    }


def _batchnorm(generator, prefix, width) -> dict:
    return {
        prefix + "weight": 1 + _randn(generator, width),
        prefix + "bias": _randn(generator, width),
        prefix + "running_mean": _randn(generator, width),
        prefix + "running_var": 0.5 + torch.rand(width, generator=generator),
        prefix + "num_batches_tracked": torch.tensor(7),
    }


def dan_state(generator, prefix="", classes=8, heads=4) -> dict:
    """The authors' DAN: torchvision ResNet-18 (tiny widths) under `features.*`, then DAN's heads."""
    state = {prefix + "features.0.weight": _randn(generator, DAN_STEM, 3, 7, 7, scale=0.1)}
    state.update(_batchnorm(generator, prefix + "features.1.", DAN_STEM))
    in_width = DAN_STEM
    for stage, width in enumerate(DAN_WIDTHS):
        for block in range(2):
            base = f"{prefix}features.{4 + stage}.{block}."
            block_in = in_width if block == 0 else width
            state[base + "conv1.weight"] = _randn(generator, width, block_in, 3, 3, scale=0.1)
            state.update(_batchnorm(generator, base + "bn1.", width))
            state[base + "conv2.weight"] = _randn(generator, width, width, 3, 3, scale=0.1)
            state.update(_batchnorm(generator, base + "bn2.", width))
            if block == 0 and (stage > 0 or block_in != width):
                state[base + "downsample.0.weight"] = _randn(generator, width, block_in, 1, 1, scale=0.1)
                state.update(_batchnorm(generator, base + "downsample.1.", width))
        in_width = width
    channels, reduced, bottleneck = DAN_WIDTHS[-1], DAN_WIDTHS[-1] // 2, DAN_WIDTHS[-1] // 16
    for head in range(heads):
        base = f"{prefix}cat_head{head}."
        state.update(
            {
                base + "sa.conv1x1.0.weight": _randn(generator, reduced, channels, 1, 1),
                base + "sa.conv1x1.0.bias": _randn(generator, reduced),
            }
        )
        state.update(_batchnorm(generator, base + "sa.conv1x1.1.", reduced))
        for name, kernel in (("conv_3x3", (3, 3)), ("conv_1x3", (1, 3)), ("conv_3x1", (3, 1))):
            state[base + f"sa.{name}.0.weight"] = _randn(generator, channels, reduced, *kernel)
            state[base + f"sa.{name}.0.bias"] = _randn(generator, channels)
            state.update(_batchnorm(generator, base + f"sa.{name}.1.", channels))
        state.update(
            {
                base + "ca.attention.0.weight": _randn(generator, bottleneck, channels),
                base + "ca.attention.0.bias": _randn(generator, bottleneck),
            }
        )
        state.update(_batchnorm(generator, base + "ca.attention.1.", bottleneck))
        state.update(
            {
                base + "ca.attention.3.weight": _randn(generator, channels, bottleneck),
                base + "ca.attention.3.bias": _randn(generator, channels),
            }
        )
    state.update(
        {prefix + "fc.weight": _randn(generator, classes, channels), prefix + "fc.bias": _randn(generator, classes)}
    )
    state.update(_batchnorm(generator, prefix + "bn.", classes))
    return state


# ------------------------------------------------------------------------------------------ reference forwards


def _linear(state, name, x):
    return F.linear(x, state[name + ".weight"], state[name + ".bias"])


def _layer_norm(state, name, x):
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=1e-6)


def _timm_blocks(state, prefix, x, heads):
    layers = sorted({int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix)})
    for layer in layers:
        block = f"{prefix}{layer}."
        batch, tokens, width = x.shape
        qkv = _linear(state, block + "attn.qkv", _layer_norm(state, block + "norm1", x))
        q, k, v = qkv.reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(dim=-1)
        x = x + _linear(state, block + "attn.proj", (attention @ v).transpose(1, 2).reshape(batch, tokens, width))
        hidden = F.gelu(_linear(state, block + "mlp.fc1", _layer_norm(state, block + "norm2", x)))
        x = x + _linear(state, block + "mlp.fc2", hidden)
    return x


def timm_vit_reference(state, pixel_values, prefix="", pooling="cls"):
    """timm's VisionTransformer as MAE's fine-tuning uses it (class token + positions, blocks, norm or fc_norm)."""
    s = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    x = F.conv2d(pixel_values, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(len(x), -1, -1), x], dim=1) + s["pos_embed"]
    x = _timm_blocks(s, "blocks.", x, HEADS)
    if pooling == "mean":
        return _layer_norm(s, "fc_norm", x[:, 1:].mean(dim=1))
    return _layer_norm(s, "norm", x)[:, 0]


def mae_reference(state, pixel_values, noise):
    """facebookresearch/mae `MaskedAutoencoderViT.forward`'s prediction, for given masking noise."""
    x = F.conv2d(pixel_values, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"][:, 1:]
    batch, length, width = x.shape
    keep = int(length * (1 - 0.75))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, width))
    x = torch.cat([(state["cls_token"] + state["pos_embed"][:, :1]).expand(batch, -1, -1), x], dim=1)
    x = _layer_norm(state, "norm", _timm_blocks(state, "blocks.", x, HEADS))
    x = _linear(state, "decoder_embed", x)
    masks = state["mask_token"].expand(batch, length + 1 - x.shape[1], -1)
    patches = torch.cat([x[:, 1:], masks], dim=1)
    patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1], patches], dim=1) + state["decoder_pos_embed"]
    x = _layer_norm(state, "decoder_norm", _timm_blocks(state, "decoder_blocks.", x, DECODER_HEADS))
    return _linear(state, "decoder_pred", x)[:, 1:]


def _bn(state, name, x):
    return F.batch_norm(
        x,
        state[name + ".running_mean"],
        state[name + ".running_var"],
        state[name + ".weight"],
        state[name + ".bias"],
        training=False,
        eps=1e-5,
    )


def dan_reference(state, pixel_values, prefix=""):
    """torchvision's ResNet-18 (eval) without its pooling and fc, then DAN's heads, fc and BatchNorm1d."""
    s = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    x = F.relu(_bn(s, "features.1", F.conv2d(pixel_values, s["features.0.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage in range(4):
        for block in range(2):
            base = f"features.{4 + stage}.{block}."
            stride = 2 if stage > 0 and block == 0 else 1
            out = F.relu(_bn(s, base + "bn1", F.conv2d(x, s[base + "conv1.weight"], stride=stride, padding=1)))
            out = _bn(s, base + "bn2", F.conv2d(out, s[base + "conv2.weight"], padding=1))
            if base + "downsample.0.weight" in s:
                x = _bn(s, base + "downsample.1", F.conv2d(x, s[base + "downsample.0.weight"], stride=stride))
            x = F.relu(out + x)
    heads = []
    for head in range(4):
        base = f"cat_head{head}."

        def conv(name, inputs, padding, base=base):
            weight, bias = s[f"{base}sa.{name}.0.weight"], s[f"{base}sa.{name}.0.bias"]
            return _bn(s, f"{base}sa.{name}.1", F.conv2d(inputs, weight, bias, padding=padding))

        reduced = conv("conv1x1", x, 0)
        attention = F.relu(
            conv("conv_3x3", reduced, 1) + conv("conv_1x3", reduced, (0, 1)) + conv("conv_3x1", reduced, (1, 0))
        )
        pooled = (x * attention.sum(dim=1, keepdim=True)).mean(dim=(2, 3))
        hidden = F.relu(_bn(s, base + "ca.attention.1", _linear(s, base + "ca.attention.0", pooled)))
        heads.append(pooled * torch.sigmoid(_linear(s, base + "ca.attention.3", hidden)))
    heads = F.log_softmax(torch.stack(heads, dim=1), dim=1)
    return _bn(s, "bn", _linear(s, "fc", heads.sum(dim=1)))


# ------------------------------------------------------------------------------------------------------ tests


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def _save(tmp_path, checkpoint, name="checkpoint.pth"):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_mae_pretraining_checkpoint_converts_to_a_stock_vitmae_with_the_same_reconstruction(generator, tmp_path):
    state = timm_vit_state(generator, decoder=True)
    path = _save(tmp_path, {"model": state, "epoch": 799})
    assert detect_kind(torch.load(path, weights_only=True)) == "mae-pretraining"
    conversion = convert_to_folder(
        path, tmp_path / "mae", num_attention_heads=HEADS, decoder_num_attention_heads=DECODER_HEADS
    )
    model = conversion.model
    # Every tensor landed where it should: qkv split into q, k, v; the rest one to one.
    layer = model.vit.layers[1].attention
    for index, projection in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
        assert torch.equal(projection.weight, state["blocks.1.attn.qkv.weight"][index * HIDDEN : (index + 1) * HIDDEN])
    assert torch.equal(model.decoder.decoder_layers[0].mlp.fc2.bias, state["decoder_blocks.0.mlp.fc2.bias"])
    assert torch.equal(model.decoder.mask_token, state["mask_token"])

    pixel_values, noise = torch.randn(2, 3, IMAGE, IMAGE, generator=generator), torch.rand(2, 16, generator=generator)
    reloaded = ViTMAEForPreTraining.from_pretrained(tmp_path / "mae").eval()  # stock transformers
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(pixel_values, noise=noise).logits, mae_reference(state, pixel_values, noise), atol=1e-5, rtol=1e-4
        )
    card = (tmp_path / "mae" / "README.md").read_text()
    assert conversion.sha256 in card and "checkpoint.pth" in card
    assert reloaded.config.layer_norm_eps == 1e-6 and reloaded.config.norm_pix_loss


def test_a_fine_tuned_vit_becomes_the_backbone_and_its_classifier_is_dropped_out_loud(generator, tmp_path, caplog):
    state = timm_vit_state(generator, head=7, fc_norm=True, norm=False)  # MAE fine-tuning: global pool, no norm
    conversion = convert(_save(tmp_path, {"model": state}), num_attention_heads=HEADS)
    model = conversion.model
    assert isinstance(model, MaeViTModel) and model.pooling == "mean"
    assert conversion.dropped == {"head.weight": (7, HIDDEN), "head.bias": (7,)} and "dropped" in caplog.text
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).pooler_output,
            timm_vit_reference(state, pixel_values, pooling="mean"),
            atol=1e-5,
            rtol=1e-4,
        )


def test_the_authors_dan_converts_with_identical_scores(generator, tmp_path):
    state = dan_state(generator)
    path = _save(
        tmp_path, {"iter": 40, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    )
    conversion = convert_to_folder(path, tmp_path / "dan")
    assert conversion.kind == "dan" and conversion.left_initialised == ["class_centers"]
    model = DanForImageClassification.from_pretrained(tmp_path / "dan").eval()
    assert model.config.hidden_sizes == list(DAN_WIDTHS) and model.config.id2label[7] == "Contempt"
    pixel_values = torch.randn(3, 3, 64, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, dan_reference(state, pixel_values), atol=1e-4, rtol=1e-4)
    assert "class_centers" in (tmp_path / "dan" / "README.md").read_text()


def test_the_authors_emma_converts_with_identical_outputs(generator, tmp_path):
    vit = timm_vit_state(generator, prefix="vit.")
    head = {
        "vit.head.0.weight": _randn(generator, 24, HIDDEN),
        "vit.head.0.bias": _randn(generator, 24),
        "vit.head.2.weight": _randn(generator, 20, 24),
        "vit.head.2.bias": _randn(generator, 20),
    }
    va = {
        "va_head.0.weight": _randn(generator, 12, 28),
        "va_head.0.bias": _randn(generator, 12),
        "va_head.2.weight": _randn(generator, 2, 12),
        "va_head.2.bias": _randn(generator, 2),
    }
    state = {**vit, **head, **dan_state(generator, prefix="cnn."), **va}
    conversion = convert(_save(tmp_path, {"epoch": 3, "model": state}), num_attention_heads=HEADS)
    model = conversion.model
    assert isinstance(model, EmmaForAffectAnalysis) and conversion.kind == "emma"
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    with torch.no_grad():
        output = model(pixel_values)
        scores = _linear(
            state, "vit.head.2", F.relu(_linear(state, "vit.head.0", timm_vit_reference(state, pixel_values, "vit.")))
        )
        cnn = dan_reference(state, pixel_values, "cnn.")
        va_out = _linear(state, "va_head.2", F.relu(_linear(state, "va_head.0", torch.cat([cnn, scores], dim=1))))
    # The authors' output is [valence, arousal, 8 expression logits, 12 AU logits].
    torch.testing.assert_close(output.valence_arousal, va_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.logits, scores[:, :8], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.au_logits, scores[:, 8:], atol=1e-5, rtol=1e-4)


def test_the_authors_cotex_converts_with_the_views_mean(generator, tmp_path):
    views = [
        {
            **timm_vit_state(generator, prefix="vit."),
            "vit.head.weight": _randn(generator, 6, HIDDEN),
            "vit.head.bias": _randn(generator, 6),
        }
        for _ in range(2)
    ]
    checkpoint = {"epoch": 5, "args": {"mask_rate": 0.75, "lambda_JS": 100}, "val_acc": [0.61], "state_dicts": views}
    conversion = convert(_save(tmp_path, checkpoint), num_attention_heads=HEADS)
    model = conversion.model
    assert isinstance(model, CotexForImageClassification) and model.config.num_views == 2
    assert model.config.mask_ratio == 0.75 and model.config.js_weight == 100 and model.config.id2label[0] == "Anger"
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    expected = torch.stack(
        [_linear(view, "vit.head", timm_vit_reference(view, pixel_values, "vit.")) for view in views], dim=1
    )
    with torch.no_grad():
        output = model(pixel_values)
    torch.testing.assert_close(output.view_logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.logits, expected.mean(dim=1), atol=1e-5, rtol=1e-4)


def test_position_embeddings_of_another_grid_are_interpolated(generator, tmp_path):
    state = timm_vit_state(generator, head=None)
    conversion = convert(_save(tmp_path, {"model": state}), image_size=48, num_attention_heads=HEADS)
    positions = conversion.model.embeddings.position_embeddings
    assert positions.shape == (1, 37, HIDDEN) and "4x4 to a 6x6" in conversion.interpolated
    assert torch.equal(positions[:, :1], state["pos_embed"][:, :1]), "the class token's position is kept"
    grid = state["pos_embed"][:, 1:].reshape(1, 4, 4, HIDDEN).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, HIDDEN)
    )
    torch.testing.assert_close(positions[:, 1:], expected)
    assert conversion.model(torch.randn(1, 3, 48, 48)).pooler_output.shape == (1, HIDDEN)


def test_checkpoints_that_do_not_fit_are_refused_with_the_names(generator, tmp_path):
    state = timm_vit_state(generator, decoder=True)
    with pytest.raises(CheckpointError, match=r"unknown source tensors: blocks\.0\.attn\.extra"):
        convert(_save(tmp_path, {"model": {**state, "blocks.0.attn.extra": torch.zeros(3)}}), num_attention_heads=HEADS)
    without_norm = {key: value for key, value in state.items() if not key.startswith("decoder_norm.")}
    path = _save(tmp_path, {"model": without_norm}, "no_norm.pth")
    with pytest.raises(
        CheckpointError,
        match=r"model tensors with no source .*decoder\.decoder_norm\.bias, decoder\.decoder_norm\.weight",
    ):
        convert(path, num_attention_heads=HEADS)
    conversion = convert(path, num_attention_heads=HEADS, allow_missing=("decoder.decoder_norm.*",))
    assert conversion.left_initialised == ["decoder.decoder_norm.bias", "decoder.decoder_norm.weight"]
    wrong = {**state, "blocks.1.mlp.fc2.weight": torch.zeros(HIDDEN, MLP + 1)}
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: vit\.layers\.1\.mlp\.fc2\.weight \(32, 65\) \(model \(32, 64\)\)",
    ):
        convert(_save(tmp_path, {"model": wrong}, "wrong.pth"), num_attention_heads=HEADS)
    with pytest.raises(CheckpointError, match="is not a checkpoint of kind dan"):
        convert(_save(tmp_path, {"model": state}, "mae.pth"), kind="dan")


class Payload:
    """An object whose unpickling would run code: a converter must never execute it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_needs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "executed"
    path = _save(tmp_path, {"model": {"cls_token": torch.zeros(1)}, "extra": Payload(str(marker))})
    with pytest.raises(CheckpointError, match="needs code to load .*: refused, never run"):
        convert(path)
    assert not marker.exists()


def test_a_corrupt_or_foreign_file_is_named_not_a_readable_checkpoint(tmp_path, generator):
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    good = _save(tmp_path, {"model_state_dict": dan_state(generator)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:500])
    for path in (junk, truncated):
        with pytest.raises(CheckpointError, match=f"{path.name} is not a checkpoint"):
            convert(path)


def test_the_convert_command_writes_a_folder_and_reports_what_it_did(generator, tmp_path, capsys):
    path = _save(tmp_path, {"model_state_dict": dan_state(generator)})
    cli_main(["convert", str(path), str(tmp_path / "out")])
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "dan" and report["left_initialised"] == ["class_centers"] and len(report["sha256"]) == 64
    assert (tmp_path / "out" / "model.safetensors").is_file() and (
        tmp_path / "out" / "preprocessor_config.json"
    ).is_file()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(path), str(tmp_path / "again"), "--kind", "emma"])
    assert exit_info.value.code == 1 and "is not a checkpoint of kind emma" in capsys.readouterr().err
