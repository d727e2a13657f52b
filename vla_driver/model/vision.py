"""Vision encoders that turn a camera image into a fixed number of tokens in the LLM's embedding space."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel

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


class PretrainedVisionEncoder(nn.Module):
    """Any local Hugging Face vision tower (e.g. SigLIP) whose patch features are pooled to the token grid."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        model = AutoModel.from_pretrained(cfg.pretrained_dir, local_files_only=True)
        self.tower = getattr(model, "vision_model", model)
        hidden = self.tower.config.hidden_size
        self.grid = cfg.token_grid
        self.proj = nn.Sequential(nn.Linear(hidden, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.tower.config.image_size
        x = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        patches = self.tower(pixel_values=x * 2 - 1).last_hidden_state  # (B, N, D)
        side = int(patches.shape[1] ** 0.5)
        grid = patches[:, -side * side:].transpose(1, 2).reshape(x.shape[0], -1, side, side)
        tokens = F.adaptive_avg_pool2d(grid, self.grid).flatten(2).transpose(1, 2)
        return self.proj(tokens)


def build_vision_encoder(cfg: VisionConfig, embed_dim: int) -> nn.Module:
    return PretrainedVisionEncoder(cfg, embed_dim) if cfg.pretrained_dir else ConvVisionEncoder(cfg, embed_dim)
