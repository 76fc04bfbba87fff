"""`kws-train export`: a checkpoint to the ONNX file the daemon loads.

The graph takes features [batch, the front end's feature_size] and returns probabilities [batch]; its metadata
carries the front end, the threshold, name, version and a summary of the training data.
The threshold is chosen for a target false-accept rate on held-out negative audio.
onnxruntime is checked against torch before the file is kept.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from kws_stream import frontends
from kws_stream.model import CASCADE_INPUT, CASCADE_KEY, INPUT_NAME, MAX_CASCADE, MAX_GATE_DB, OUTPUT_NAME, KwsModel, \
    ModelError, metadata_for

from .nets import LIFTS, ModelConfig, build

TOLERANCE = 1e-4


class ExportError(Exception):
    pass


class WithSigmoid(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def load_checkpoint(path: str) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = dict(ckpt["model_args"])
    for key in ("hidden", "channels", "emb_channels", "deep_channels", "deeper_channels", "student_channels"):
        if key in args:
            args[key] = tuple(args[key])
    model = build(ModelConfig(**args))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


class MeanProbability(torch.nn.Module):
    """Several models as one: the logit of their mean probability, so that the exported
    sigmoid gives the ensemble's mean probability. Members in `lifted` read what `lift`
    makes of the input (embeddings from part-3a rows: the packaged network's tail, run
    once for all of them)."""

    def __init__(self, nets: list[torch.nn.Module], lifted: list[torch.nn.Module] = (),
                 lift: torch.nn.Module | None = None):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.lifted = torch.nn.ModuleList(lifted)
        self.lift = lift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [n(x) for n in self.nets]
        if len(self.lifted):
            y = self.lift(x).flatten(1)
            logits += [n(y) for n in self.lifted]
        p = torch.stack([torch.sigmoid(z) for z in logits]).mean(dim=0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)


def ensemble_front_end(archs: list[str]):
    """The front end a model of these archs (several: their mean) reads: theirs, or the
    earlier stage nets.LIFTS names when some read that stage and the others the later one."""
    fronts = [ModelConfig(arch=a).front_end for a in archs]
    reads = {LIFTS[fe][0] if fe in LIFTS and LIFTS[fe][0] in fronts else fe for fe in fronts}
    if len(reads) != 1:
        raise ExportError("an ensemble's checkpoints must read the same front end")
    return reads.pop()


def load_checkpoints(paths: list[str]) -> tuple[torch.nn.Module, dict]:
    """One checkpoint, or several as their mean (an ensemble). Members must read one front
    end, or (nets.LIFTS) one front end and an earlier stage of it, which the ensemble then
    reads: emb-tune models with heads on embeddings read part-3a rows."""
    loaded = [load_checkpoint(p) for p in paths]
    front_end = ensemble_front_end([info["model_args"]["arch"] for _, info in loaded])
    if len(loaded) == 1:
        model, info = loaded[0]
        return model, {**info, "front_end": front_end.name}
    fronts = [ModelConfig(arch=info["model_args"]["arch"]).front_end for _, info in loaded]
    direct = [m for (m, _), fe in zip(loaded, fronts) if fe is front_end]
    lifted = [m for (m, _), fe in zip(loaded, fronts) if fe is not front_end]
    info = dict(loaded[0][1])
    info["model_args"] = dict(info["model_args"], arch="+".join(i["model_args"]["arch"] for _, i in loaded))
    info["front_end"] = front_end.name
    lift = LIFTS[next(fe for fe in fronts if fe is not front_end)][1]().eval() if lifted else None
    return MeanProbability(direct, lifted, lift).eval(), info


def _torch_graph(model: torch.nn.Module, size: int):
    """The ONNX graph of a model with its sigmoid: features [batch, size] to prob [batch]."""
    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(WithSigmoid(model).eval(), (torch.zeros(2, size),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=17, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return onnx.load(str(path))


def _renamed(graph, prefix: str, inputs: dict[str, str]):
    """A graph's nodes and weights with every name under `prefix`, but those in `inputs`
    (a name -> the outer name it reads)."""
    def name(n: str) -> str:
        return inputs.get(n, f"{prefix}{n}" if n else n)
    nodes = []
    for node in graph.node:
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = f"{prefix}{node.name}"
        copy.input[:] = [name(n) for n in node.input]
        copy.output[:] = [name(n) for n in node.output]
        nodes.append(copy)
    weights = []
    for w in graph.initializer:
        copy = type(w)()
        copy.CopyFrom(w)
        copy.name = name(w.name)
        weights.append(copy)
    return nodes, weights, name(graph.output[0].name)


def cascade_proto(members: list[torch.nn.Module], size: int):
    """An ensemble as a cascade, one graph: the first member scores every window; the
    others run only on the rows whose first probability is at least the input
    CASCADE_INPUT, which then get the mean of all members' probabilities. The other rows
    keep the first member's probability. The runtime feeds n*t - (n - 1) for threshold t
    (kws_stream.model.KwsModel.score): a window below it cannot reach t on the mean, so
    every window at or above the threshold gets the full ensemble's score."""
    import onnx
    from onnx import TensorProto, helper
    graphs = [_torch_graph(m, size).graph for m in members]
    first_nodes, weights, first = _renamed(graphs[0], "m0/", {INPUT_NAME: INPUT_NAME})
    node = helper.make_node
    outer = first_nodes + [
        node("GreaterOrEqual", [first, CASCADE_INPUT], ["c/pass"]),
        node("NonZero", ["c/pass"], ["c/nonzero"]),
        node("Reshape", ["c/nonzero", "c/flat"], ["c/rows"]),
        node("Size", ["c/rows"], ["c/count"]),
        node("Greater", ["c/count", "c/none"], ["c/any"])]
    weights += [helper.make_tensor("c/flat", TensorProto.INT64, [1], [-1]),
                helper.make_tensor("c/none", TensorProto.INT64, [], [0])]
    then = [node("Gather", [INPUT_NAME, "c/rows"], ["c/x"], axis=0),
            node("Gather", [first, "c/rows"], ["c/p0"], axis=0)]
    probs = ["c/p0"]
    for i, g in enumerate(graphs[1:], 1):
        nodes, w, out = _renamed(g, f"m{i}/", {INPUT_NAME: "c/x"})
        then += nodes
        weights += w
        probs.append(out)
    weights.append(helper.make_tensor("c/n", TensorProto.FLOAT, [], [float(len(members))]))
    then += [node("Sum", probs, ["c/sum"]), node("Div", ["c/sum", "c/n"], ["c/mean"]),
             node("ScatterElements", [first, "c/rows", "c/mean"], ["c/all"], axis=0)]
    prob = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"])  # noqa: E731
    branch_then = helper.make_graph(then, "confirm", [], [prob("c/all")])
    branch_else = helper.make_graph([node("Identity", [first], ["c/first"])], "first_only", [], [prob("c/first")])
    outer.append(node("If", ["c/any"], [OUTPUT_NAME], then_branch=branch_then, else_branch=branch_else))
    graph = helper.make_graph(
        outer, "kws_cascade",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", size]),
         helper.make_tensor_value_info(CASCADE_INPUT, TensorProto.FLOAT, [])],
        [prob(OUTPUT_NAME)], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kws-train")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def write_onnx(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    import onnx
    size = frontends.get(meta["kws.front_end"]).feature_size
    if CASCADE_KEY in meta:
        proto = cascade_proto(list(model.nets), size)
    else:
        proto = _torch_graph(model, size)
    set_metadata(proto, meta)
    onnx.save(proto, str(path))


def set_metadata(proto, meta: dict[str, str]) -> None:
    """Replace a ModelProto's metadata with `meta` plus the digest of its graph, which
    the runtime checks on load (kws_stream.model.weights_sha256)."""
    import hashlib
    del proto.metadata_props[:]
    sealed = {**meta, "kws.weights_sha256": hashlib.sha256(proto.graph.SerializeToString()).hexdigest()}
    for k, v in sealed.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def check_parity(model: torch.nn.Module, path: Path, features: np.ndarray) -> float:
    """The largest difference between onnxruntime's and torch's probabilities; for a
    cascade, also that a threshold leaves every window that can reach it scored in full
    and the others at the first member's probability."""
    with torch.no_grad():
        x = torch.from_numpy(features)
        want = torch.sigmoid(model(x)).numpy()
        first = torch.sigmoid(model.nets[0](x)).numpy() if isinstance(model, MeanProbability) else want
    onnx_model = KwsModel(path)
    got = onnx_model.score(features)
    diff = float(np.abs(got - want).max())
    if onnx_model.info.cascade:
        for t in np.quantile(want, [0.25, 0.5, 0.75, 0.9]).tolist():  # thresholds that split the probe
            floor = onnx_model.cascade_floor(t)
            full = first >= floor
            clear = np.abs(first - floor) > 1e-5  # a row this close may fall either way in float32
            got = onnx_model.score(features, t)
            diff = max(diff, float(np.abs(got - np.where(full, want, first))[clear].max(initial=0.0)))
    if diff > TOLERANCE:
        raise ExportError(f"onnxruntime and torch disagree by {diff:.2e} (limit {TOLERANCE:g})")
    return diff


def probe_features(front_end: str, n: int = 256, seed: int = 0) -> np.ndarray:
    """Real front-end features of varied synthetic audio, to compare runtimes on: the
    front end's own windows, every 80 ms of 30 s of a warbling, pulsing tone in noise."""
    fe_cls = frontends.get(front_end)
    rng = np.random.default_rng(seed)
    t = np.arange(fe_cls.sample_rate * 30) / fe_cls.sample_rate
    x = 0.1 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t) * (1 + np.sin(2 * np.pi * 3 * t)) + \
        rng.normal(0, 0.02, t.size)
    fe, out = fe_cls(hop_frames=8), np.empty(fe_cls.feature_size, dtype=np.float32)
    rows = np.stack([out.copy() for _ in frontends.windows(fe, x, out)])
    return rows[rng.choice(len(rows), size=min(n, len(rows)), replace=False)]


def threshold_from_folds(path: str, target_fa_per_hour: float = 0.5, arch: str | None = None) -> dict:
    """The threshold `kws-train folds` found for the target rate on held-out-voice negatives,
    pooled over its leave-voices-out models of this arch ("a+b": their ensemble)."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    archs = report.get("archs", [report.get("fit", {}).get("arch")])
    if "runs" in report:  # a kws_train.ensemble_folds report: its pooled results are the ensemble's
        members = arch.split("+") if arch else archs
        if len(members) != len(report["runs"]) or set(members) != set(archs):
            raise ExportError(f"{path}: the ensemble of {len(report['runs'])} {'/'.join(archs)} models "
                              f"({', '.join(report['runs'])}), not of {arch!r}")
        variant = ""
    elif arch is None or arch == archs[0]:
        variant = ""
    elif "+" in arch and sorted(arch.split("+")) == sorted(archs):
        variant = "ensemble_"
    elif arch in archs:
        variant = f"{arch}_"
    else:
        raise ExportError(f"{path}: no folds of arch {arch!r} (it has {', '.join(map(str, archs))})")
    pooled = report.get(f"pooled_{variant}hop_1.0")
    key = f"at_{target_fa_per_hour}_fa_per_hour"
    if pooled is None or key not in pooled:
        raise ExportError(f"{path}: no pooled hop-1.0 result at {target_fa_per_hour} false accepts/h")
    t = pooled[key]["threshold"]
    if not 0.0 <= t <= 1.0:
        raise ExportError(f"{path}: no threshold reaches {target_fa_per_hour} false accepts/h")
    return {"threshold": t, "how": f"{target_fa_per_hour} false accepts/h on {pooled['negative_hours']:.2f} h of "
                                   f"negatives spoken by held-out voices, pooled over leave-voices-out folds ({path})"}


# A model on the rows front end holds the network's last layers itself (Apache-2.0, section 4b)
NOTICE = ("holds layers of Google's speech_embedding network (Apache-2.0, as openWakeWord packages it): the "
          "packaged weights and, for emb-tune members, a copy modified by fine-tuning in kws-stream; see "
          "THIRD_PARTY.md")


def export(ckpt: str, out: str, name: str, version: str, threshold: float | None = None,
           negatives: str | None = None, target_fa_per_hour: float = 0.5, jobs: int = 2,
           folds_report: str | None = None, gate_margin_db: float = 0.0, cascade: bool = False) -> dict:
    model, info = load_checkpoints([ckpt] if isinstance(ckpt, str) else list(ckpt))
    members = 0
    if cascade:
        if not isinstance(model, MeanProbability) or len(model.lifted) or len(model.nets) > MAX_CASCADE:
            raise ExportError(f"--cascade needs 2 to {MAX_CASCADE} checkpoints that read one front end")
        members = len(model.nets)
    training = {"arch": info["model_args"]["arch"], "data": info["config"]["data"],
                "files": info.get("train_files"), "positives": info.get("train_positives"),
                "epochs": info["config"]["epochs"], "recipe": info["config"]["recipe"]}
    front_end = info["front_end"]
    if gate_margin_db and not frontends.get(front_end).gates:
        raise ExportError(f"--gate-margin: front end {front_end} has no speech gate")
    out_path = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "draft.onnx"
        write_onnx(model, draft, metadata_for(name=name, version=version, threshold=threshold or 0.5,
                                              front_end=front_end, training=training, cascade=members))
        diff = check_parity(model, draft, probe_features(front_end))
        chosen = {"threshold": threshold, "how": "given"}
        if folds_report is not None:
            chosen = threshold_from_folds(folds_report, target_fa_per_hour, info["model_args"]["arch"])
        elif threshold is None:
            if not negatives:
                raise ExportError("give --threshold or --negatives to choose one")
            from .evaluate import corpus_files, score_files, threshold_for_fa_rate
            files, positives = corpus_files(negatives)
            if positives:
                raise ExportError(f"{negatives}: has positives; the threshold needs target-free audio")
            neg = score_files(str(draft), [(str(f), 0) for f in files], jobs, cascade=False)
            t = threshold_for_fa_rate(neg, target_fa_per_hour)
            hours = sum(s.seconds for s in neg) / 3600
            if t > 1.0:
                raise ExportError(f"no threshold reaches {target_fa_per_hour} false accepts/h on {negatives}: "
                                  "a negative window scores 1.0; give --threshold")
            chosen = {"threshold": t, "how": f"{target_fa_per_hour} false accepts/h on {hours:.2f} h of {negatives}"}
        training["threshold"] = chosen
        meta = metadata_for(name=name, version=version, threshold=chosen["threshold"], front_end=front_end,
                            training=training, gate_margin_db=gate_margin_db, cascade=members)
        if getattr(frontends.get(front_end), "stops_at_rows", False):
            meta["kws.notice"] = NOTICE
        write_onnx(model, out_path, meta)
    check_parity(model, out_path, probe_features(front_end, seed=1))
    return {"out": str(out_path), "max_abs_diff": diff, **chosen}


def restamp(source: str, out: str, version: str | None, gate_margin_db: float | None) -> dict:
    """An exported model with a new version and speech gate (None: its own), its graph
    (weights, threshold, training record) unchanged: the metadata is rewritten and sealed
    again, and the new file replaces `out` only once it gives the source's scores exactly."""
    import onnx
    try:
        src = KwsModel(source)
    except ModelError as e:
        raise ExportError(str(e)) from None
    proto = onnx.load(source)
    old = {p.key: p.value for p in proto.metadata_props}
    info = src.info
    version = version or info.version
    gate_margin_db = info.gate_margin_db if gate_margin_db is None else gate_margin_db
    try:
        meta = metadata_for(name=info.name, version=version, threshold=info.threshold, label=info.label,
                            front_end=info.front_end, gate_margin_db=gate_margin_db, cascade=info.cascade,
                            training=json.loads(old["kws.training"]) if "kws.training" in old else None)
    except ValueError as e:
        raise ExportError(f"{source}: {e}") from None
    if "kws.notice" in old:
        meta["kws.notice"] = old["kws.notice"]
    set_metadata(proto, meta)
    target = Path(out)
    draft = target.with_name(f".{target.name}.draft")
    try:
        onnx.save(proto, str(draft))
        x = probe_features(info.front_end)
        diff = float(np.abs(KwsModel(draft).score(x) - src.score(x)).max())
        if diff != 0.0:
            raise ExportError(f"{out}: scores differ from {source}'s by {diff:g}; the graph changed")
        draft.replace(target)
    except OSError as e:
        raise ExportError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        draft.unlink(missing_ok=True)
    return {"out": out, "from": source, "version": version, "threshold": info.threshold,
            "gate_margin_db": gate_margin_db}


def run(args) -> int:
    try:
        if args.gate_margin is not None and not 0.0 <= args.gate_margin <= MAX_GATE_DB:
            raise ExportError(f"--gate-margin {args.gate_margin:g}: not a margin in [0, {MAX_GATE_DB:g}] dB")
        if args.from_model:
            if args.threshold is not None or args.negatives or args.threshold_from or args.name or args.cascade:
                raise ExportError("--from-model keeps the model's name and threshold, and its graph; leave out "
                                  "--name, --threshold, --negatives, --threshold-from and --cascade")
            result = restamp(args.from_model, args.out, args.version, args.gate_margin)
        else:
            result = export(args.ckpt, args.out, args.name or "kws-ne-slyshu", args.version or "1.0.0", args.threshold,
                            args.negatives, args.target_fa_per_hour, args.jobs, args.threshold_from,
                            args.gate_margin or 0.0, args.cascade)
    except ExportError as e:
        print(f"kws-train export: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False))
    return 0
