"""Front ends: audio in 10 ms hops to the features a model scores.

`base` holds the shared audio constants and the `FrontEnd` contract; each front end is
one module and registers here. A model names its front end in its metadata, and
everything else asks the registry (`get`) instead of branching on a front end's kind.
"""
from __future__ import annotations

from .base import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, SEGMENT_SECONDS, WINDOW_HOPS, FrontEnd, windows
from .embedding import EmbeddingFrontEnd, EmbeddingRowsFrontEnd, MelFrontEnd
from .seed import SeedFrontEnd

REGISTRY: dict[str, type[FrontEnd]] = {
    fe.name: fe for fe in (SeedFrontEnd, EmbeddingFrontEnd, EmbeddingRowsFrontEnd, MelFrontEnd)}


def get(name: str) -> type[FrontEnd]:
    """The front end a model's metadata names; KeyError lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown front end {name!r}; known: {', '.join(REGISTRY)}") from None


__all__ = ["FRAMES_PER_SECOND", "HOP_LENGTH", "REGISTRY", "SAMPLE_RATE", "SEGMENT_SECONDS", "WINDOW_HOPS",
           "EmbeddingFrontEnd", "EmbeddingRowsFrontEnd", "FrontEnd", "MelFrontEnd", "SeedFrontEnd", "get", "windows"]
