"""How large a speech gate's margin may be: for each call with the phrase, the largest
margin at which its worst window holding the whole phrase still hears an active frame.

A margin above a call's value would gate that window. Windows are on the daemon's grid
(`--hop`, 1 s by default) over the call followed by one window of silence, as the front
end pads a stream; the gate is the runtime's own (kws_stream.frontends.gate).

    python -m kws_train.gate_margin --data data/codecs data/gatecheck [--hop 1.0]

Prints, per corpus: the calls that have such a window, the share whose windows a margin
keeps, for each margin of the grid, and the worst calls with their conditions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kws_stream.audio import read_file
from kws_stream.frontends import FRAMES_PER_SECOND, EmbeddingFrontEnd
from kws_stream.frontends.gate import SpeechGate

from .data import corpus_files

MARGINS = tuple(float(m) for m in range(3, 61, 3))  # dB


def call_headroom(signal: np.ndarray, bounds: tuple[float, float], hop_frames: int,
                  margins: tuple[float, ...] = MARGINS, front_end=EmbeddingFrontEnd) -> float | None:
    """The largest margin of the grid that keeps every window holding the whole phrase (0 if
    none does); None if no window holds it."""
    rate, step, span = front_end.sample_rate, front_end.hop_length, front_end.window_samples
    verdicts = [front_end.gated_windows(signal, SpeechGate(m), hop_frames) for m in margins]
    worst = None
    for i, (start, _) in enumerate(verdicts[0]):
        a = start * step / rate  # seconds
        if a <= bounds[0] and a + span / rate >= bounds[1]:
            best = max((m for m, v in zip(margins, verdicts) if not v[i][1]), default=0.0)
            worst = best if worst is None else min(worst, best)
    return worst


def corpus_headroom(root: str, hop_frames: int) -> dict:
    files, bounds = corpus_files(root)
    rows = []
    for f in files:
        meta_path = Path(root) / "calls" / f"{f.stem}.json"  # a synth run that was stopped has only these
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        span = bounds.get(f.stem) or meta.get("bounds")
        h = None if span is None else call_headroom(read_file(f), tuple(span), hop_frames)
        if h is None:
            continue
        rows.append({"call": f.stem, "headroom_db": h, **{k: meta.get(k) for k in ("noise", "snr_db", "codec", "form")}})
    heads = np.array([r["headroom_db"] for r in rows])
    rows.sort(key=lambda r: r["headroom_db"])
    return {"calls": len(rows), "kept": {f"{m:g}": round(float(np.mean(heads >= m)), 4) for m in MARGINS} if rows else {},
            "worst": rows[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR", help="corpora with the phrase")
    ap.add_argument("--hop", type=float, default=1.0, help="seconds between windows, as the daemon's --hop-seconds")
    args = ap.parse_args(argv)
    hop_frames = max(1, round(args.hop * FRAMES_PER_SECOND))
    try:
        report = {root: corpus_headroom(root, hop_frames) for root in args.data}
    except (FileNotFoundError, ValueError) as e:
        print(f"gate_margin: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
