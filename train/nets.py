"""Keyword networks, built from a config: over the seed's (3, 48, 50) window features
(dnn, cnn) or over a window of speech embeddings (emb, emb-gru). Each arch reads one
front end, and takes its input's shape from that front end's class."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from kws_stream.frontends import EmbeddingFrontEnd, EmbeddingRowsFrontEnd, FrontEnd, MelFrontEnd, SeedFrontEnd

SEED_SHAPE = SeedFrontEnd.feature_shape  # (channels, mel bands, time bins)
EMB_WINDOW, EMB_DIM = EmbeddingFrontEnd.feature_shape  # (embeddings per window, dimensions), time-major
ROWS_WINDOW, ROW_DIM = EmbeddingRowsFrontEnd.feature_shape  # (part-3a rows per window, 96 channels x 2 bins)
MEL_WINDOW, MEL_BANDS = MelFrontEnd.feature_shape  # (mel frames per window, 32 bands), time-major
STUDENT_STRIDE = MelFrontEnd.rows_per_embedding  # mel frames between a MelStudent's outputs: the embeddings' grid


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
    student_channels: tuple[int, ...] = (96, 192, 256, 256)  # mel-student: the student network's widths

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


class _Activation(nn.Module):
    """The embedding network's activation: LeakyReLU, then (its Max node) a floor."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha, self.floor = alpha, float("-inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(nn.functional.leaky_relu(x, self.alpha), min=self.floor)


class EmbeddingTail(nn.Module):
    """The speech_embedding network after part 3a (its last five convolutions and last
    pool), as trainable torch layers that start from the packaged weights: a window of
    part-3a rows (B, 52 * 192) becomes its 22 embeddings (B, 22, 96), as the front end
    computes them until training moves the weights."""

    def __init__(self):
        super().__init__()
        import onnx
        from onnx import numpy_helper
        fe = EmbeddingRowsFrontEnd
        layers: list[nn.Module] = []
        cut = onnx.load_from_string(fe.network_bytes(fe.rows_part)).graph.output[0].name
        for name, after in zip(fe.tail_parts, (cut, None)):
            graph = onnx.load_from_string(fe.network_bytes(name)).graph
            weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
            started = after is None
            for node in graph.node:
                if not started:
                    started = node.output[0] == after
                    continue
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                if node.op_type == "Conv":
                    if any(v != 1 for v in attrs.get("strides", [1, 1]) + attrs.get("dilations", [1, 1])) \
                            or attrs.get("group", 1) != 1:
                        raise ValueError(f"{name}: {node.name} is strided, dilated or grouped; not handled")
                    w = weights[node.input[1]]
                    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=len(node.input) > 2,
                                     padding=tuple(attrs.get("pads", [0, 0])[:2]))
                    conv.weight.data = torch.from_numpy(w.copy())
                    if conv.bias is not None:
                        conv.bias.data = torch.from_numpy(weights[node.input[2]].copy())
                    layers.append(conv)
                elif node.op_type == "LeakyRelu":
                    layers.append(_Activation(attrs["alpha"]))
                elif node.op_type == "Max" and isinstance(layers[-1], _Activation) and node.input[1] in weights:
                    layers[-1].floor = float(weights[node.input[1]].reshape(-1)[0])  # max with a constant
                elif node.op_type == "MaxPool":
                    layers.append(nn.MaxPool2d(tuple(attrs["kernel_shape"]), tuple(attrs["strides"])))
                elif node.op_type not in ("Reshape", "Transpose"):  # the last part's (1, 96, n, 1) -> (n, 96)
                    raise ValueError(f"{name}: operator {node.op_type} is not handled")
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, ROWS_WINDOW, ROW_DIM // 2, 2).permute(0, 2, 1, 3)  # (B, channels, rows, bins)
        return self.net(x).squeeze(-1).transpose(1, 2)  # (B, 22 embeddings, 96)


class TunedEmbeddingHead(nn.Module):
    """emb-tune: the embedding network's tail (EmbeddingTail) trained together with
    emb-deep's head, over a window of part-3a rows."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tail = EmbeddingTail()
        self.head = EmbeddingHead(replace(cfg, arch="emb-deep"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(x))


class _Separable(nn.Module):
    """Depthwise temporal convolution, pointwise mix, then (but for the last) BN and ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, last: bool = False):
        super().__init__()
        self.dw = nn.Conv1d(cin, cin, k, stride=stride, groups=cin, bias=False)
        self.pw = nn.Conv1d(cin, cout, 1, bias=last)
        self.bn = None if last else nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(x))
        return x if self.bn is None else torch.relu(self.bn(x))


class MelStudent(nn.Module):
    """A small network in speech_embedding's place: mel frames (B, T, 32) to 96-dim
    embeddings every 8 frames (B, (T - 76) // 8 + 1, 96), each from the last 68 of the 76
    frames the teacher's embedding hears (unpadded convolutions, strides 2, 2, 2). Trained
    first to give the teacher's embeddings (kws_train.distil), then with the head on labels.
    Computed once per frame, it costs 2.9 M multiply-adds per second of audio, parts 1-3a of
    the teacher 63 M; as a model's first layers it runs over each scored window's 244 frames,
    6.2 M per window."""

    FIELD = 68  # mel frames under one output; its first output (frames 0..67) is dropped

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.c1 = nn.Conv1d(MEL_BANDS, widths[0], 4, stride=2, bias=False)
        self.bn1 = nn.BatchNorm1d(widths[0])
        self.body = nn.Sequential(_Separable(widths[0], widths[1], 5, 2), _Separable(widths[1], widths[2], 5, 2),
                                  _Separable(widths[2], widths[3], 5), _Separable(widths[3], EMB_DIM, 2, last=True))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(mel.transpose(1, 2))))
        return self.body(x).transpose(1, 2)[:, 1:]


class MelStudentHead(nn.Module):
    """mel-student: MelStudent under emb-deep's head, over a window of mel frames."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.student = MelStudent(cfg.student_channels)
        self.head = EmbeddingHead(replace(cfg, arch="emb-deep"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(x.reshape(-1, MEL_WINDOW, MEL_BANDS)))

    def file_logits(self, mel: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        """Logits of the windows of one file's mel frames (32, T) that start at `starts`
        (multiples of the student's stride of 8 frames, each window inside the file), the
        student run once over the file: window s's outputs are the file's outputs s // 8 ..
        s // 8 + 21, so this equals forward() on each window (to float rounding); where
        windows overlap as the mining pool's do (every 48 frames), the student costs about a
        fifth on long streams, a third on short calls."""
        if (starts % STUDENT_STRIDE).any() or (starts + MEL_WINDOW > mel.shape[1]).any():
            raise ValueError(f"file_logits: windows must start every {STUDENT_STRIDE} frames and end in the file")
        emb = self.student(torch.from_numpy(np.ascontiguousarray(mel.T))[None])[0]
        first = torch.from_numpy(starts // STUDENT_STRIDE)[:, None] + torch.arange(EMB_WINDOW)
        return self.head(emb[first])


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
         "emb-gru": EmbeddingGRU, "emb-attn": EmbeddingHead, "emb-tune": TunedEmbeddingHead,
         "mel-student": MelStudentHead}
ARCH_FRONT_END: dict[str, type[FrontEnd]] = {"dnn": SeedFrontEnd, "cnn": SeedFrontEnd, "emb": EmbeddingFrontEnd,
                                             "emb-deep": EmbeddingFrontEnd, "emb-deep4": EmbeddingFrontEnd,
                                             "emb-gru": EmbeddingFrontEnd, "emb-attn": EmbeddingFrontEnd,
                                             "emb-tune": EmbeddingRowsFrontEnd, "mel-student": MelFrontEnd}


# Front end A -> (front end B whose frames are an earlier stage of A's, the module that computes
# A's frames from B's). An ensemble of models on A and on B reads B.
LIFTS: dict[type[FrontEnd], tuple[type[FrontEnd], type[nn.Module]]] = {
    EmbeddingFrontEnd: (EmbeddingRowsFrontEnd, EmbeddingTail)}


def build(cfg: ModelConfig) -> nn.Module:
    return ARCHS[cfg.arch](cfg)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
