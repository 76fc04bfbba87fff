"""`kws-train`: build a corpus, fit, evaluate and export models.

Each subcommand's arguments live here; the work lives in its own module, which is
imported only when that subcommand runs (the runtime never imports torch).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# on speech embeddings (emb-tune: on the network's part-3a rows; mel-student: on the mel frames); kws_train.nets
EMB_ARCHS = ["emb", "emb-deep", "emb-deep4", "emb-gru", "emb-attn", "emb-tune", "mel-student"]


def _synth_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic call corpus in the seed's layout")
    p.set_defaults(module="kws_train.synth")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus directory (audio/, word_bounds.json, manifest.jsonl)")
    p.add_argument("--n", type=int, required=True, help="number of calls")
    p.add_argument("--seed", type=int, default=0, help="the same arguments and seed give the same bytes")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--pos-fraction", type=float, default=0.45, help="share of calls with the target phrase")
    p.add_argument("--split", choices=["train", "val", "all"], default="train",
                   help="val uses RHVoice voices that train never has; all uses all twelve allowed voices (voice folds)")
    p.add_argument("--holdout-engine", choices=["rhvoice", "espeak", "festival"],
                   help="train: leave this engine out; val: use only this engine")
    p.add_argument("--min-seconds", type=float, default=3.0, help="shortest call")
    p.add_argument("--max-seconds", type=float, default=20.0, help="longest call (speech may run slightly over)")
    p.add_argument("--sentence-share", type=float, default=0.65,
                   help="share of positives and confusables said inside one whole sentence (bounds by DTW)")
    p.add_argument("--confusable-share", type=float, default=0.25, metavar="SHARE",
                   help="share of target-free calls built on a confusable (forms of «слыш-», «слуш-», near-rhymes)")
    p.add_argument("--pseudo-speakers", type=float, default=0.3,
                   help="share of speech tracks given a new pitch and vocal-tract length (WORLD vocoder)")
    p.add_argument("--codecs", choices=["train", "heldout"], default="train",
                   help="heldout: every call through a codec that training never uses (g723, codec2)")
    p.add_argument("--real-context", type=float, default=0.0, metavar="SHARE",
                   help="share of calls with speech whose words around are real Russian recordings, not synthetic "
                        "sentences (positives, confusables and ordinary speech alike)")
    p.add_argument("--real-speech", choices=["train", "heldout"], default="train",
                   help="which real recordings go around them: three files of four (train) or the fourth (heldout)")
    p.add_argument("--no-fetch", action="store_true",
                   help="do not apt-get download the packages of real recordings and music")


def _training_options(p, epochs: int, hard_negatives: float, init: tuple[str, str], candidate_help: str) -> None:
    """The options fit and folds share (kws_train.fit.FitConfig.from_args reads them), declared
    once; each command keeps its own defaults for epochs and hard negatives. `init` is the --init
    option's metavar and help."""
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training windows (default {epochs})")
    p.add_argument("--batch", type=int, default=128, help="windows per step (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the cosine schedule (default 1e-3)")
    p.add_argument("--seed", type=int, default=42, help="of the weights, the windows' order and offsets (default 42)")
    p.add_argument("--threads", type=int, default=2, help="torch threads and feature workers")
    p.add_argument("--cache", metavar="DIR", help="feature cache (default RUN/cache)")
    p.add_argument("--hard-negatives", type=float, default=hard_negatives, metavar="SHARE",
                   help="from epoch 2, add this share of the epoch's windows as the corpus's hardest negative windows")
    p.add_argument("--negative-weight", type=float, default=1.0, metavar="W",
                   help="loss weight of target-free windows, rising linearly from 1 in the first epoch to W "
                        "in the last")
    p.add_argument("--min-cover", type=float, default=0.9, metavar="SHARE",
                   help="a training window is positive when it holds this share of the phrase (partly covered "
                        "windows are left out)")
    p.add_argument("--skip-easy", type=float, default=0.0, metavar="P",
                   help="leave out of the loss the windows whose probability lies within P of their label "
                        "(openWakeWord: 0.001), so --negative-weight acts on the target-free windows that still score")
    p.add_argument("--band-warp", type=float, default=0.0, metavar="W",
                   help="warp half the training windows along frequency by a factor within 1/(1+W) .. 1+W "
                        "(vocal-tract length perturbation; mel-student only)")
    p.add_argument("--time-warp", type=float, default=0.0, metavar="W",
                   help="in half the training windows, stretch each of 20 pieces by 1/(1+W) .. 1+W and fit "
                        "them back into the window, its ends kept (uneven durations; mel-student only)")
    p.add_argument("--init", metavar=init[0], help=init[1])
    p.add_argument("--candidate-low", type=float, metavar="P", help=candidate_help)


def _fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="train a model on a corpus in the seed's layout")
    p.set_defaults(module="kws_train.fit")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="training corpora")
    p.add_argument("--exclude-engine", choices=["rhvoice", "espeak", "festival"],
                   help="leave this engine's calls out (to validate on it alone)")
    p.add_argument("--val", metavar="DIR", help="validation corpus, scored every epoch")
    p.add_argument("--arch", choices=["dnn", "cnn", *EMB_ARCHS], default="cnn",
                   help="dnn: the seed's model; cnn: a small CNN on the seed's features; emb: a conv head on "
                        "speech embeddings; emb-deep: a wider, deeper one (emb-deep4: one layer more); "
                        "emb-gru: a bidirectional GRU on them; emb-attn: emb-deep with a self-attention layer; "
                        "mel-student: emb-deep's head on a small network over the mel frames (start it from "
                        "python -m kws_train.distil)")
    p.add_argument("--recipe", choices=["seed", "improved"], default="improved",
                   help="seed: the notebook's windows and MIL; improved: phrase at random offsets, SpecAugment")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (ckpt.pt, metrics.json)")
    _training_options(p, epochs=15, hard_negatives=0.0,
                      init=("RUN/ckpt.pt", "start from this checkpoint (emb-tune: an emb-deep one, for its head)"),
                      candidate_help="train a verifier: every epoch also holds the target-free windows the --init "
                                     "model scores at or above P (at most a quarter of the epoch's windows, the "
                                     "highest first)")


def _folds_parser(sub) -> None:
    p = sub.add_parser("folds", help="leave-voices-out cross-validation over the twelve allowed RHVoice voices")
    p.set_defaults(module="kws_train.folds")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="corpora made with --split all")
    p.add_argument("--negatives", required=True, metavar="DIR",
                   help="long target-free calls of all twelve voices (--split val --holdout-engine rhvoice "
                        "--pos-fraction 0); other folds' streams are trained on")
    p.add_argument("--extra-val", nargs="*", default=[], metavar="DIR",
                   help="more validation corpora scored per fold (e.g. made with --codecs heldout)")
    p.add_argument("--train-extra", nargs="*", default=[], metavar="DIR",
                   help="more corpora (--split all) trained on but not validated on: measures what more data buys "
                        "against the same validation")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3], help="which folds to train and validate")
    p.add_argument("--hops", nargs="+", type=float, default=[1.0], help="scoring hops to compare, in seconds")
    p.add_argument("--without", nargs="*", default=[],
                   choices=["sentence", "pseudo", "new-codecs", "streams", "low-snr-positives"],
                   help="leave these out of training, to measure what they buy")
    p.add_argument("--out", required=True, metavar="RUN")
    p.add_argument("--arch", choices=EMB_ARCHS, default="emb")
    p.add_argument("--also-arch", nargs="*", default=[], choices=EMB_ARCHS,
                   help="train these too on every fold, and report them and the ensemble of all")
    p.add_argument("--baseline", metavar="M.onnx",
                   help="also score fold 0 (the voices RHVOICE_VAL that earlier models never heard) with this model")
    _training_options(p, epochs=12, hard_negatives=0.2,
                      init=("RUN", "start fold k from RUN/foldk/ckpt.pt (a `kws-train folds` run; emb-tune: of emb-deep; "
                                   "mel-student: a python -m kws_train.distil run)"),
                      candidate_help="train verifiers of the --init RUN: fold k's epochs also hold the target-free "
                                     "windows RUN/foldk scores at or above P (measure the cascade with python -m "
                                     "kws_train.verifier --stage2)")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a model through the daemon's streaming code")
    p.set_defaults(module="kws_train.evaluate")
    p.add_argument("--model", required=True, metavar="M.onnx", help="an exported model (kws-train export)")
    p.add_argument("--data", required=True, metavar="DIR", help="labelled corpus in the seed's layout")
    p.add_argument("--negatives", metavar="DIR", help="long target-free audio for false accepts per hour")
    p.add_argument("--out", metavar="DIR", help="write eval.json, det.png and scores.png here")
    p.add_argument("--jobs", type=int, default=2, help="worker processes replaying files (default 2)")
    p.add_argument("--cascade", action="store_true",
                   help="a cascade model as kws-stream runs it at the model's threshold (default: every window in "
                        "full, so that the curves, AUC and rates at other thresholds are the model's; the cascade "
                        "changes no detection at the threshold it runs at)")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as the ONNX model the daemon loads")
    p.set_defaults(module="kws_train.export")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", nargs="+", metavar="RUN/ckpt.pt",
                        help="one checkpoint, or several of one front end exported as their mean probability")
    source.add_argument("--from-model", metavar="M.onnx",
                        help="an exported model: the same graph, name and threshold; --version and --gate-margin "
                             "given replace its own")
    p.add_argument("--out", required=True, metavar="M.onnx")
    p.add_argument("--name", help="default: kws-ne-slyshu (not with --from-model)")
    p.add_argument("--version", help="default: 1.0.0, or with --from-model the model's own")
    p.add_argument("--threshold", type=float, help="fixed threshold instead of one chosen on --negatives")
    p.add_argument("--negatives", metavar="DIR", help="target-free corpus for choosing the threshold")
    p.add_argument("--threshold-from", metavar="RUN/folds.json",
                   help="take the threshold kws-train folds found on held-out voices for --target-fa-per-hour")
    p.add_argument("--target-fa-per-hour", type=float, default=0.5,
                   help="the false-accept rate the threshold holds (default 0.5 per hour)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes scoring --negatives (default 2)")
    p.add_argument("--gate-margin", type=float, metavar="DB",
                   help="the speech gate the runtime applies by default: windows where no mel band rises DB above "
                        "its noise floor are not scored (0: none; default 0, or with --from-model the model's own)")
    p.add_argument("--cascade", action="store_true",
                   help="several checkpoints: run the first alone on every window and the others only where its "
                        "probability leaves the mean able to reach the threshold in force (the same detections, "
                        "less CPU; not with --from-model, which keeps the model's graph)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_synth_parser, _fit_parser, _folds_parser, _eval_parser, _export_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args.module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("kws-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
