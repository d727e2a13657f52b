"""Model configuration: one dataclass, documented defaults, JSON round trip (stored in the manifest)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..core.camera_rig import CameraRig
from ..core.types import CAMERA_SIZE


@dataclass
class TinyLLMConfig:
    """The Qwen2 built locally when no pretrained directory is given (~3 M parameters)."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    tokenizer_vocab_size: int = 800  # upper bound for the locally trained BPE


@dataclass
class LoRAConfig:
    """MindDrive's adapter settings (r 16, alpha 16, dropout 0.05 on q/k/v/o)."""

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class VisionConfig:
    """Small CNN trained from scratch; ``pretrained_dir`` plugs in a local Hugging Face vision model instead."""

    image_height: int = CAMERA_SIZE[0]  # the simulator camera's size: lane offsets of 0.5 m are ~1.5 px here
    image_width: int = CAMERA_SIZE[1]
    channels: tuple[int, ...] = (16, 32, 48, 64, 96)
    token_grid: tuple[int, int] = (2, 8)  # visual tokens = rows x cols
    pretrained_dir: str = ""
    # the pretrained tower's Hugging Face config, recorded when it is first loaded: a checkpoint rebuilds the
    # tower from it (its weights are the checkpoint's), so loading one needs no copy of ``pretrained_dir``
    tower_config: dict | None = None


@dataclass
class VLAConfig:
    llm: TinyLLMConfig = field(default_factory=TinyLLMConfig)
    llm_pretrained_dir: str = ""  # e.g. a local Qwen2.5-0.5B directory on the car
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    vocabulary: str = "alphadrive"  # or "minddrive"
    num_waypoints: int = 6
    waypoint_dt: float = 0.5
    num_query_tokens: int = 2
    head_hidden: int = 256
    ego_scale: tuple[float, float, float] = (20.0, 3.0, 0.5)  # divide speed, accel, yaw rate before projection
    # The cameras the model was trained for (``CameraRig.to_dict()``); None: one top-down image of any size,
    # as the checkpoints before perspective cameras were trained (resized inside the graph).
    rig: dict | None = None
    history: int = 1  # frames per camera, one per decision period (the newest last)

    @classmethod
    def for_rig(cls, rig: CameraRig, history: int = 1, **fields) -> VLAConfig:
        """A config whose vision input is the rig's model size (96x128 gives the CNN a 3x4 token grid)."""
        stride = 2 ** len(VisionConfig.channels)
        grid = (max(1, rig.model_height // stride), max(1, rig.model_width // stride))
        vision = VisionConfig(image_height=rig.model_height, image_width=rig.model_width, token_grid=grid)
        return cls(vision=vision, rig=rig.to_dict(), history=history, **fields)

    @property
    def camera_rig(self) -> CameraRig | None:
        return CameraRig.from_dict(self.rig) if self.rig is not None else None

    @property
    def views(self) -> int:
        """Images per observation: every camera of the rig times the frames of history (1 without a rig)."""
        return len(self.rig["cameras"]) * self.history if self.rig is not None else 1

    @property
    def tokens_per_view(self) -> int:
        return self.vision.token_grid[0] * self.vision.token_grid[1]

    @property
    def num_image_tokens(self) -> int:
        return self.tokens_per_view * self.views

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VLAConfig:
        d = dict(d)
        vision = d.pop("vision", {})
        rig = d.pop("rig", None)
        vision = VisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vision.items()})
        return cls(
            llm=TinyLLMConfig(**d.pop("llm", {})),
            lora=LoRAConfig(**d.pop("lora", {})),
            vision=vision,
            rig=rig,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()},
        )
