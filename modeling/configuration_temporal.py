"""Configuration of the temporal affect model: a small sequence model over a frame-level model's per-frame outputs."""

from transformers import PreTrainedConfig

from .affect_labels import ACTION_UNITS
from .configuration_emma import S_AFF_WILD2_AU_POS_WEIGHT, check_affect_head_fields


class TemporalAffectConfig(PreTrainedConfig):
    r"""
    A transformer encoder over one face's frames, with rotary positions on the frames' numbers: attention sees how
    far apart two frames are (a gap in a track keeps its length), and a window of any length runs the same model.
    It was chosen over a dilated TCN because the frames of a track are irregular (occlusions, `every_n_frames`,
    lost detections): a TCN needs a regular grid whose holes must be filled, where attention simply masks them.

    Args:
        feature_size: width of the frame model's pooled feature (`pooler_output`; 768 for EMMA at paper size).
        num_scores: the frame model's scores read per frame (EMMA's VA-head inputs: 8 CNN + 8 + 12 = 28).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the encoder's size.
        dropout: on the inputs and in the blocks, in training.
        causal: each frame sees only itself and earlier frames (streaming, the app), else the whole window
            (offline). Fixed at training.
        rope_theta: base of the rotary frequencies (in frames).
        frame_model: the path or Hub id of the frame-level model this one reads, and `frame_model_sha256` its
            weights' sha256: a temporal folder used with another frame model is refused.
        window_frames: the window it was trained on, in frames (evaluation and inference run windows of it).
        frames_per_second: the frame rate of the videos it was trained on (frame numbers per second). Inference
            places a video's frames at their time x this rate: a window spans the same seconds at any frame rate.
        va_loss_weight, expression_loss_weight, au_loss_weight, au_pos_weight, au_thresholds, au_names: as EMMA's.
    """

    model_type = "temporal_affect"

    feature_size: int = 768
    num_scores: int = 28
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    dropout: float = 0.1
    causal: bool = False
    rope_theta: float = 10000.0
    frame_model: str | None = None
    frame_model_sha256: str | None = None
    window_frames: int | None = None
    frames_per_second: float = 30.0
    va_loss_weight: float = 1.0
    expression_loss_weight: float = 1.0
    au_loss_weight: float = 1.0
    au_pos_weight: list[float] | tuple[float, ...] = S_AFF_WILD2_AU_POS_WEIGHT
    au_thresholds: list[float] | tuple[float, ...] = (0.5,) * len(ACTION_UNITS)
    au_names: list[str] | tuple[str, ...] = ACTION_UNITS

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must split into num_attention_heads ({self.num_attention_heads}) "
                "heads of an even width (rotary positions turn pairs of channels)"
            )
        check_affect_head_fields(self, kwargs)
        super().__post_init__(**kwargs)

    @property
    def num_action_units(self) -> int:
        return len(self.au_names)


TemporalAffectConfig.register_for_auto_class()

__all__ = ["TemporalAffectConfig"]
