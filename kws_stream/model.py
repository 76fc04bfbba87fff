"""ONNX keyword models and the contract their metadata must meet.

A model file describes itself: which front end makes its input, the threshold it was
tuned for, its name and version. The daemon reads that and needs no matching flags.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from . import frontends
from .frontends.gate import SpeechGate
from .onnxfile import open_session, sha256_hex

log = logging.getLogger(__name__)

SCHEMA = "1"
INPUT_NAME = "features"  # float32 [batch, feature_size]
OUTPUT_NAME = "prob"  # float32 [batch], the keyword probability in [0, 1]
DEFAULT_MODEL = "kws-default.onnx"
MAX_GATE_DB = 60.0  # a speech gate's margin over the noise floor, at most
CASCADE_KEY = "kws.cascade"  # metadata: the members of an ensemble exported as a cascade (kws-train export)
CASCADE_INPUT = "stage1_floor"  # float32 scalar: the first member's probability that calls in the others
CASCADE_SLACK = 1e-4  # the floor sits this far below the exact bound, for float32 rounding of the mean
MAX_CASCADE = 8  # members; the mean's float32 rounding, at most about n * n * 6e-8 on the bound, stays in the slack



class ModelError(Exception):
    """A model file that is missing, unreadable or breaks the contract."""


GRAPH_FIELD = 7  # ModelProto.graph: the nodes and every weight; metadata lives outside it


def weights_sha256(data: bytes) -> str:
    """SHA-256 of a serialized ONNX model's graph (nodes and weights), read straight from
    the protobuf wire format so the runtime needs no onnx package. Metadata is outside
    the graph, so the digest can be stored in the metadata itself."""
    pos, found = 0, None
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if field == GRAPH_FIELD:
                found = sha256_hex(data[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
    if found is None or pos != len(data):
        raise ValueError("no complete ONNX graph")
    return found


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf")
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7


def metadata_for(*, name: str, version: str, threshold: float, label: str = "не слышу|не слышно",
                 front_end: str = frontends.SeedFrontEnd.name, training: dict | None = None,
                 gate_margin_db: float = 0.0, cascade: int = 0) -> dict[str, str]:
    """The metadata_props an exported model must carry (strings, as ONNX stores them)."""
    fe = frontends.get(front_end)
    meta = {
        "kws.schema": SCHEMA,
        "kws.name": name,
        "kws.version": version,
        "kws.label": label,
        "kws.threshold": repr(float(threshold)),
        "kws.front_end": front_end,
        "kws.sample_rate": str(fe.sample_rate),
        "kws.feature_size": str(fe.feature_size),
        "kws.window_frames": str(fe.window_frames),
    }
    if not 0.0 <= gate_margin_db <= MAX_GATE_DB:
        raise ValueError(f"gate margin {gate_margin_db:g} dB is outside [0, {MAX_GATE_DB:g}]")
    if gate_margin_db:
        if not fe.gates:
            raise ValueError(f"front end {front_end} has no speech gate")
        meta["kws.gate_margin_db"] = repr(float(gate_margin_db))
    if cascade:
        if not 2 <= cascade <= MAX_CASCADE:
            raise ValueError(f"a cascade needs 2 to {MAX_CASCADE} members, not {cascade}")
        meta[CASCADE_KEY] = str(cascade)
    if training is not None:
        meta["kws.training"] = json.dumps(training, ensure_ascii=False, sort_keys=True)
    return meta


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    label: str
    threshold: float
    front_end: str
    path: str
    gate_margin_db: float = 0.0  # the speech gate the model was measured with (0: none)
    cascade: int = 0  # an ensemble's members, its first run alone first (0: one graph run whole)


def default_model_path() -> Path:
    return Path(str(resources.files("kws_stream.models").joinpath(DEFAULT_MODEL)))


class KwsModel:
    """An onnxruntime session over a checked model; `score(batch)` gives probabilities."""

    def __init__(self, path: str | Path | None = None, threads: int = 1, expect_sha256: str | None = None):
        path = Path(path) if path is not None else default_model_path()
        self.path = path
        try:
            import onnxruntime  # noqa: F401 (open_session uses it)
        except ImportError as e:  # pragma: no cover - a broken install
            raise ModelError(f"onnxruntime is not importable: {e}") from e
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise ModelError(f"{path}: no such model file" if e.errno == errno.ENOENT
                             else f"{path}: cannot open ({e.strerror or e})") from None
        if stat.S_ISDIR(mode):
            raise ModelError(f"{path}: a directory, not a model file")
        if not stat.S_ISREG(mode):
            raise ModelError(f"{path}: not a regular file, so not a model file")
        try:
            data = path.read_bytes()  # read once: the bytes checked are the bytes run
        except OSError as e:
            raise ModelError(f"{path}: cannot read ({e.strerror or e})") from e
        if not data:
            raise ModelError(f"{path}: empty file, not a model")
        self.sha256 = sha256_hex(data)
        if expect_sha256 is not None and expect_sha256.lower() != self.sha256:
            raise ModelError(f"{path}: SHA-256 is {self.sha256}, not the pinned {expect_sha256}")
        try:
            self._session = open_session(data, threads)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: not a loadable ONNX model ({reason})") from e
        self.info = self._check(self._session, path)
        self._check_weights(self._session, path, data)
        self.front_end_class = frontends.get(self.info.front_end)
        try:
            self.front_end_class.load()
        except RuntimeError as e:
            raise ModelError(f"{path}: front end {self.info.front_end}: {e}") from e
        self.feature_size = self.front_end_class.feature_size
        self._floor_for: float | None = None  # the threshold the cascade's floor was made for
        self._floor = np.array(self.cascade_floor(None), dtype=np.float32)

    @staticmethod
    def _check(session, path: Path) -> ModelInfo:
        meta = session.get_modelmeta().custom_metadata_map

        def need(key: str) -> str:
            if not meta.get(key, "").strip():
                raise ModelError(f"{path}: metadata has no {key!r} (or an empty one); export the model with "
                                 "kws-train export")
            return meta[key]

        if need("kws.schema") != SCHEMA:
            raise ModelError(f"{path}: metadata schema {meta['kws.schema']!r}, expected {SCHEMA!r}")
        fe_name = need("kws.front_end")
        try:
            fe = frontends.get(fe_name)
        except KeyError as e:
            raise ModelError(f"{path}: {e.args[0]}") from None
        for key, expected in (("kws.sample_rate", fe.sample_rate), ("kws.feature_size", fe.feature_size),
                              ("kws.window_frames", fe.window_frames)):
            if need(key) != str(expected):
                raise ModelError(f"{path}: {key} is {meta[key]}, front end {fe_name} needs {expected}")
        try:
            threshold = float(need("kws.threshold"))
        except ValueError:
            raise ModelError(f"{path}: kws.threshold {meta['kws.threshold']!r} is not a number") from None
        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"{path}: kws.threshold {threshold} is outside [0, 1]")
        gate = meta.get("kws.gate_margin_db", "0")
        try:
            gate_margin = float(gate)
        except ValueError:
            raise ModelError(f"{path}: kws.gate_margin_db {gate!r} is not a number") from None
        if not 0.0 <= gate_margin <= MAX_GATE_DB or (gate_margin and not fe.gates):
            raise ModelError(f"{path}: kws.gate_margin_db {gate} is not a margin in [0, {MAX_GATE_DB:g}] dB "
                             f"that front end {fe_name} can apply")
        cascade = meta.get(CASCADE_KEY, "0")
        if not (cascade.isascii() and cascade.isdigit()) or int(cascade) == 1 or int(cascade) > MAX_CASCADE:
            raise ModelError(f"{path}: {CASCADE_KEY} {cascade!r} is not a count of members from 2 to {MAX_CASCADE}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if int(cascade):
            if len(inputs) != 2 or inputs[1].name != CASCADE_INPUT or inputs[1].type != "tensor(float)" \
                    or inputs[1].shape:
                raise ModelError(f"{path}: a cascade needs a second input, the float scalar {CASCADE_INPUT!r}")
            inputs = inputs[:1]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
            raise ModelError(f"{path}: expected one float input {INPUT_NAME!r}")
        if len(inputs[0].shape) != 2 or inputs[0].shape[1] != fe.feature_size:
            raise ModelError(f"{path}: input shape {inputs[0].shape}, expected [batch, {fe.feature_size}]")
        if len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
            raise ModelError(f"{path}: expected one output {OUTPUT_NAME!r}")
        return ModelInfo(name=need("kws.name"), version=need("kws.version"), label=need("kws.label"),
                         threshold=threshold, front_end=fe_name, path=str(path), gate_margin_db=gate_margin,
                         cascade=int(cascade))

    @staticmethod
    def _check_weights(session, path: Path, data: bytes) -> None:
        """Compare the graph's digest with the one stored at export."""
        stored = session.get_modelmeta().custom_metadata_map.get("kws.weights_sha256")
        if stored is None:
            raise ModelError(f"{path}: metadata has no 'kws.weights_sha256'; export the model with kws-train export")
        try:
            actual = weights_sha256(data)
        except ValueError as e:
            raise ModelError(f"{path}: not a readable ONNX file ({e})") from None
        if actual != stored:
            raise ModelError(f"{path}: weights do not match the checksum in the metadata (damaged or altered file)")

    def score(self, features: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Probabilities for a (batch, feature_size) float32 array. A cascade given the
        threshold in force scores in full only the windows that can reach it; the others
        get its first member's probability, which is below the threshold too. Without a
        threshold, every window gets the whole ensemble."""
        feed = {INPUT_NAME: features}
        if self.info.cascade:
            if threshold != self._floor_for:
                self._floor_for, self._floor = threshold, np.array(self.cascade_floor(threshold), dtype=np.float32)
            feed[CASCADE_INPUT] = self._floor
        (prob,) = self._session.run(None, feed)
        return prob.reshape(-1)

    def cascade_floor(self, threshold: float | None) -> float:
        """The first member's probability below which the mean of n cannot reach the
        threshold t: n*t - (n - 1), less a margin for rounding (-inf: every window in full)."""
        n = self.info.cascade
        if threshold is None or not n:
            return -math.inf
        return n * threshold - (n - 1) - CASCADE_SLACK

    def front_end(self, hop_frames: int, gate_margin_db: float = 0.0):
        """A streaming front end; with a margin (and a front end that has one), a speech gate."""
        if gate_margin_db and self.front_end_class.gates:
            return self.front_end_class(hop_frames=hop_frames, gate=SpeechGate(gate_margin_db))
        return self.front_end_class(hop_frames=hop_frames)
