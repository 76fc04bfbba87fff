"""Keyword models over the seed's (3, 48, 50) window features, built from a config."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from kws_stream.frontend import FEATURE_SHAPE, FEATURE_SIZE


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "cnn"  # "dnn": the seed's DNN; "cnn": a small CNN over the window tensor
    hidden: tuple[int, ...] = (512, 256)  # dnn layer widths (the seed's)
    channels: tuple[int, ...] = (16, 32, 48)  # cnn conv widths
    dropout: float = 0.1


class SeedDNN(nn.Module):
    """The notebook's model: LayerNorm(7200) -> 512 -> 256 -> 1 with ReLU and dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(FEATURE_SIZE)]
        width = FEATURE_SIZE
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks over (mel/delta/delta2, 48 mel, 50 time bins), max over time.

    The max over time lets the phrase sit anywhere in the 2.5 s window, which matters
    because the daemon scores windows every second wherever the phrase falls.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        width = FEATURE_SHAPE[0]
        for i, c in enumerate(cfg.channels):
            blocks += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(cfg.channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            width = c
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *FEATURE_SHAPE))  # (B, C, mel, time)
        h = h.mean(dim=2).amax(dim=2)  # average over frequency, max over time
        return self.head(self.dropout(h)).squeeze(-1)


def build(cfg: ModelConfig) -> nn.Module:
    return {"dnn": SeedDNN, "cnn": SmallCNN}[cfg.arch](cfg)


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
