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
from kws_stream.frontends import FRAMES_PER_SECOND
from kws_stream.frontends.embedding import (EMB_HOP, EMB_STRIDE, WINDOW_MEL, WINDOW_SAMPLES, shared_nets,
                                            window_start)
from kws_stream.frontends.gate import SpeechGate

from .data import corpus_files

MARGINS = tuple(float(m) for m in range(3, 61, 3))  # dB


def call_headroom(signal: np.ndarray, bounds: tuple[float, float], hop_frames: int,
                  margins: tuple[float, ...] = MARGINS) -> float | None:
    """The largest margin of the grid that keeps every window holding the whole phrase (0 if
    none does); None if no window holds it."""
    mel = shared_nets().mel(np.concatenate([signal, np.zeros(WINDOW_SAMPLES)]))
    active = [SpeechGate(m).push(mel) for m in margins]
    s0, s1 = (round(b * FRAMES_PER_SECOND) for b in bounds)
    worst, k = None, 0
    while window_start(k, hop_frames) * EMB_HOP < signal.size:  # the windows that start inside the call
        a = window_start(k, hop_frames) * EMB_STRIDE  # its first mel frame
        k += 1
        if a <= s0 and a + WINDOW_MEL >= s1:
            kept = [m for m, flags in zip(margins, active) if flags[a:a + WINDOW_MEL].any()]
            best = max(kept, default=0.0)
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
