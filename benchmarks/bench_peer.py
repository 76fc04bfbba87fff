"""kws-stream against its nearest open peer, microWakeWord, on the same audio in one run.

Both run on one core, timed in CPU seconds:
  - microWakeWord's streaming loop as pymicro-wakeword runs it (its micro-features front end,
    then the okay_nabu streaming model), fed 10 ms of 16-bit audio at a time;
  - `kws-stream --file` on a 16 kHz WAV of the same audio (a child process, start-up included);
  - kws-stream's Spotter fed 10 ms at a time, in this process.
The audio is the two demo calls repeated to --seconds. Reported: × real time for each, and
`kws-stream --file` over microWakeWord (issue 11: target ≥ 2×, goal 10×), for the packaged
default model and for each --model given (all in the same run).
pymicro-wakeword (Apache-2.0) is needed only here: pip install pymicro-wakeword.

    python benchmarks/bench_peer.py [--seconds 300] [--model M.onnx ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import child_cpu_seconds, cpu_seconds  # noqa: E402

from kws_stream import KwsModel, Spotter, read_file  # noqa: E402
from kws_stream.frontends import HOP_LENGTH, SAMPLE_RATE  # noqa: E402

MODELS = HERE.parent / "models"


def demo_audio(seconds: float) -> np.ndarray:
    calls = np.concatenate([read_file(MODELS / "demo_positive.opus"), read_file(MODELS / "demo_negative.opus")])
    return np.resize(calls, int(seconds * SAMPLE_RATE))


def microwakeword_cpu(audio: np.ndarray) -> tuple[float, int]:
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
    mww = MicroWakeWord.from_builtin(Model.OKAY_NABU)
    features = MicroWakeWordFeatures()
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = HOP_LENGTH * 2  # 10 ms of 16-bit samples
    fired = [0]

    def run() -> None:
        for i in range(0, len(pcm), step):
            for f in features.process_streaming(pcm[i:i + step]):
                if mww.process_streaming(f):
                    fired[0] += 1
    return cpu_seconds(run), fired[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--model", nargs="*", default=[], metavar="M.onnx", help="more models to measure beside the default")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children too
    audio = demo_audio(args.seconds)
    rows = []
    mww_cpu, _ = microwakeword_cpu(audio)
    rows.append(("microWakeWord streaming (okay_nabu)", mww_cpu))
    ratios = {}
    for path in [None, *args.model]:
        name = "default" if path is None else path  # the path as given: two models may share a file name
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "calls.wav"
            sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append((f"kws-stream --file, {name} (start-up included)", child_cpu_seconds(
                [sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--quiet",
                 *([] if path is None else ["--model", path])])))
        model = KwsModel(path)

        def hops() -> None:
            sp = Spotter(model)
            for i in range(0, audio.size, HOP_LENGTH):
                sp.feed(audio[i:i + HOP_LENGTH])
            sp.finish()
        rows.append((f"kws-stream Spotter, {name}, 10 ms hops", cpu_seconds(hops)))
        ratios[name] = (args.seconds / rows[-2][1]) / (args.seconds / mww_cpu)
    results = {label: {"cpu_seconds": round(cpu, 3), "x_realtime": round(args.seconds / cpu, 1)} for label, cpu in rows}
    for label, r in results.items():
        print(f"{label:58s} {r['cpu_seconds']:8.3f} s CPU {r['x_realtime']:10.1f}x real time")
    for name, ratio in ratios.items():
        print(f"kws-stream --file ({name}) / microWakeWord: {ratio:.2f}x (target >= 2x, goal 10x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": args.seconds, "results": results,
                                               "file_over_microwakeword": {k: round(v, 3) for k, v in ratios.items()}},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
