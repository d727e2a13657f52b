"""Vision encoders that turn a camera image into a fixed number of tokens in the LLM's embedding space."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel

from .config import VisionConfig


def preprocess_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float (B, 3, height, width) in [0, 1]; the exported graphs start here too."""
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    if tuple(x.shape[-2:]) == (height, width) and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return x  # eager at the model's own size; a traced graph keeps the resize to accept any camera size
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


class ConvVisionEncoder(nn.Module):
    """A small strided CNN; the last feature map is pooled to a token grid and projected."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        layers, cin = [], 3
        for cout in cfg.channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
            cin = cout
        self.backbone = nn.Sequential(*layers)
        # Fixed pooling (input size is fixed after preprocessing) keeps the graph static for ONNX/TensorRT.
        feat_h, feat_w = cfg.image_height, cfg.image_width
        for _ in cfg.channels:
            feat_h, feat_w = (feat_h + 1) // 2, (feat_w + 1) // 2
        rows, cols = cfg.token_grid
        if feat_h % rows or feat_w % cols:
            raise ValueError(f"feature map {feat_h}x{feat_w} does not divide into token grid {rows}x{cols}")
        self.pool = nn.AvgPool2d((feat_h // rows, feat_w // cols))
        self.pos = nn.Parameter(torch.zeros(cfg.token_grid[0] * cfg.token_grid[1], cin))
        self.proj = nn.Sequential(nn.Linear(cin, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
        self.cfg = cfg

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.pool(self.backbone(pixels))  # (B, C, r, c)
        tokens = feats.flatten(2).transpose(1, 2) + self.pos
        return self.proj(tokens)


def pooling_matrix(side: int, grid: tuple[int, int]) -> torch.Tensor:
    """(rows x cols, side x side) weights that average a square patch grid into ``grid`` cells exactly as
    ``adaptive_avg_pool2d`` does; a matmul exports to ONNX at any ratio (adaptive pooling only when divisible)."""
    def spans(n_out: int) -> list[range]:
        return [range(i * side // n_out, -(-(i + 1) * side // n_out)) for i in range(n_out)]
    out = torch.zeros(grid[0] * grid[1], side * side)
    for r, rows in enumerate(spans(grid[0])):
        for c, cols in enumerate(spans(grid[1])):
            cells = [y * side + x for y in rows for x in cols]
            out[r * grid[1] + c, cells] = 1.0 / len(cells)
    return out


class PretrainedVisionEncoder(nn.Module):
    """Any local Hugging Face vision tower (e.g. SigLIP) whose patch features are pooled to the token grid."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        if cfg.tower_config is not None:  # a checkpoint's tower: its shape here, its weights in the checkpoint
            settings = dict(cfg.tower_config)
            model = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
        else:
            model = AutoModel.from_pretrained(cfg.pretrained_dir, local_files_only=True, use_safetensors=True)
            cfg.tower_config = model.config.to_dict()
        self.tower = getattr(model, "vision_model", model)
        hidden = self.tower.config.hidden_size
        self.side = self.tower.config.image_size // self.tower.config.patch_size
        self.register_buffer("pool", pooling_matrix(self.side, cfg.token_grid), persistent=False)
        self.proj = nn.Sequential(nn.Linear(hidden, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.tower.config.image_size
        x = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        patches = self.tower(pixel_values=x * 2 - 1).last_hidden_state  # (B, N, D)
        tokens = self.pool @ patches[:, -self.side * self.side:]  # (B, rows x cols, D)
        return self.proj(tokens)


def build_vision_encoder(cfg: VisionConfig, embed_dim: int) -> nn.Module:
    return PretrainedVisionEncoder(cfg, embed_dim) if cfg.pretrained_dir else ConvVisionEncoder(cfg, embed_dim)
