"""Keyword networks, built from a config: over the seed's (3, 48, 50) window features
(dnn, cnn) or over a window of speech embeddings (emb, emb-gru). Each arch reads one
front end, and takes its input's shape from that front end's class."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kws_stream.frontends import EmbeddingFrontEnd, FrontEnd, SeedFrontEnd

SEED_SHAPE = SeedFrontEnd.feature_shape  # (channels, mel bands, time bins)
EMB_WINDOW, EMB_DIM = EmbeddingFrontEnd.feature_shape  # (embeddings per window, dimensions), time-major


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "cnn"  # "dnn": the seed's DNN; "cnn": a small CNN over the window tensor; "emb": conv head on embeddings
    hidden: tuple[int, ...] = (512, 256)  # dnn layer widths (the seed's)
    channels: tuple[int, ...] = (16, 32, 48)  # cnn conv widths
    dropout: float = 0.1
    emb_channels: tuple[int, ...] = (96, 96)  # emb: temporal conv widths
    deep_channels: tuple[int, ...] = (128, 128, 128)  # emb-deep: wider, and dilations 1, 2, 4 (1.9 s of context)
    deeper_channels: tuple[int, ...] = (128, 128, 128, 128)  # emb-deep4: dilations 1, 2, 4, 8 (the whole window)
    gru_hidden: int = 64  # emb-gru: hidden units per direction
    attention_heads: int = 4  # emb-attn: heads of the self-attention layer over emb-deep's outputs

    @property
    def front_end(self) -> type[FrontEnd]:
        return ARCH_FRONT_END[self.arch.split("+")[0]]


class SeedDNN(nn.Module):
    """The notebook's model: LayerNorm(7200) -> 512 -> 256 -> 1 with ReLU and dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(SeedFrontEnd.feature_size)]
        width = SeedFrontEnd.feature_size
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
        width = SEED_SHAPE[0]
        for i, c in enumerate(cfg.channels):
            blocks += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(cfg.channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            width = c
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *SEED_SHAPE))  # (B, C, mel, time)
        h = h.mean(dim=2).amax(dim=2)  # average over frequency, max over time
        return self.head(self.dropout(h)).squeeze(-1)


class EmbeddingHead(nn.Module):
    """Temporal convolutions over a window of speech embeddings (96, 22), max over time;
    emb-attn adds one self-attention layer (residual, LayerNorm) before the max.

    Kernel 3 with dilations 1, 2 sees about 0.5 s of embeddings, each of which already
    spans 0.78 s of audio: the length of the phrase, wherever it falls in the window.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        width = EMB_DIM
        widths = {"emb-deep": cfg.deep_channels, "emb-deep4": cfg.deeper_channels,
                  "emb-attn": cfg.deep_channels}.get(cfg.arch, cfg.emb_channels)
        for i, c in enumerate(widths):
            d = 2 ** i
            blocks += [nn.Conv1d(width, c, 3, padding=d, dilation=d, bias=False), nn.BatchNorm1d(c), nn.ReLU()]
            width = c
        self.norm = nn.LayerNorm(EMB_DIM)
        self.features = nn.Sequential(*blocks)
        self.attention = None
        if cfg.arch == "emb-attn":  # each step may then weigh every other: the whole 2.46 s as context
            self.attention = nn.MultiheadAttention(width, cfg.attention_heads, dropout=cfg.dropout, batch_first=True)
            self.attention_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x.reshape(-1, EMB_WINDOW, EMB_DIM))
        h = self.features(h.transpose(1, 2))  # (B, C, T)
        if self.attention is not None:
            h = h.transpose(1, 2)
            h = self.attention_norm(h + self.attention(h, h, h, need_weights=False)[0]).transpose(1, 2)
        return self.head(self.dropout(h.amax(dim=2))).squeeze(-1)  # max over time


class EmbeddingGRU(nn.Module):
    """A bidirectional GRU over the window's embeddings, max over time of its outputs: a
    temporal model with the whole 2.46 s as context, to compare with the conv head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(EMB_DIM)
        self.gru = nn.GRU(EMB_DIM, cfg.gru_hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.gru_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.norm(x.reshape(-1, EMB_WINDOW, EMB_DIM)))
        return self.head(self.dropout(h.amax(dim=1))).squeeze(-1)


ARCHS = {"dnn": SeedDNN, "cnn": SmallCNN, "emb": EmbeddingHead, "emb-deep": EmbeddingHead, "emb-deep4": EmbeddingHead,
         "emb-gru": EmbeddingGRU, "emb-attn": EmbeddingHead}
ARCH_FRONT_END: dict[str, type[FrontEnd]] = {"dnn": SeedFrontEnd, "cnn": SeedFrontEnd, "emb": EmbeddingFrontEnd,
                                             "emb-deep": EmbeddingFrontEnd, "emb-deep4": EmbeddingFrontEnd,
                                             "emb-gru": EmbeddingFrontEnd, "emb-attn": EmbeddingFrontEnd}


def build(cfg: ModelConfig) -> nn.Module:
    return ARCHS[cfg.arch](cfg)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
