"""Small ONNX models built in the tests with onnx.helper, under the runtime's contract."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kws_stream.frontends import seed as frontend
from kws_stream.model import INPUT_NAME, OUTPUT_NAME, metadata_for

TONE_HZ = 1000.0


def burst_weights() -> tuple[np.ndarray, float]:
    """A linear model that fires on a mid-band tone burst centred in the window.

    Features are normalised per (channel, mel) row over time, so the model looks at
    the time profile of the mel band holding TONE_HZ: high in the middle bins,
    low at the edges.
    """
    w = np.zeros(frontend.FEATURE_SHAPE, dtype=np.float32)
    centres = frontend.mel_to_hz(np.linspace(frontend.hz_to_mel(frontend.F_MIN), frontend.hz_to_mel(frontend.F_MAX),
                                             frontend.N_MELS + 2))[1:-1]
    band = int(np.argmin(np.abs(centres - TONE_HZ)))
    mid = frontend.POOL_BINS // 2
    w[0, band, :] = -0.2
    w[0, band, mid - 8:mid + 8] = 0.6
    return w.reshape(-1), -8.0


def graph_sha256(model) -> str:
    """The weights digest kws-train export stores (see kws_stream.model.weights_sha256)."""
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()


def save_model(path, weights: np.ndarray | None = None, bias: float = 0.0, threshold: float = 0.5,
               meta: dict | None = None, name: str = "test-burst", version: str = "0.0.1",
               front_end: str = frontend.SeedFrontEnd.name, out_scale: float = 1.0) -> str:
    """Write sigmoid(x @ w + b) * out_scale as an ONNX model with the kws metadata (a scale
    other than 1 makes a broken model: values above 1, or NaN)."""
    if weights is None:
        weights, bias = burst_weights()
    n = weights.size
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["s"]),
         helper.make_node("Mul", ["s", "scale"], ["p"]),
         helper.make_node("Reshape", ["p", "shape"], [OUTPUT_NAME])],
        "kws_test",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(weights.reshape(n, 1).astype(np.float32), "w"),
                     numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
                     numpy_helper.from_array(np.array([out_scale], dtype=np.float32), "scale"),
                     numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = metadata_for(name=name, version=version, threshold=threshold, front_end=front_end)
    props["kws.weights_sha256"] = graph_sha256(model)
    props.update(meta or {})
    helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    onnx.save(model, str(path))
    return str(path)


def burst_signal(seconds: float, bursts: list[float], rate: int = frontend.SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Quiet noise with 0.4 s tone bursts starting at the given times."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.003, int(seconds * rate))
    t = np.arange(int(0.4 * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * TONE_HZ * t) * np.hanning(t.size)
    for b in bursts:
        i = int(b * rate)
        x[i:i + tone.size] += tone[:max(0, min(tone.size, x.size - i))]
    return x


def save_seed_dnn(path, seed: int = 0, threshold: float = 0.5) -> str:
    """The seed's DNN shape (LayerNorm 7200 -> 512 -> 256 -> 1) with random weights:
    what the seed's procedure ran per window, for speed comparisons."""
    rng = np.random.default_rng(seed)
    n = frontend.FEATURE_SIZE

    def dense(name, a, b):
        return [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), name + "_w"),
                numpy_helper.from_array(np.zeros(b, dtype=np.float32), name + "_b")]

    init = dense("l1", n, 512) + dense("l2", 512, 256) + dense("l3", 256, 1) + [
        numpy_helper.from_array(np.ones(n, dtype=np.float32), "ln_g"),
        numpy_helper.from_array(np.zeros(n, dtype=np.float32), "ln_b"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")]
    nodes = [helper.make_node("LayerNormalization", [INPUT_NAME, "ln_g", "ln_b"], ["h0"], axis=-1, epsilon=1e-5)]
    prev = "h0"
    for i, name in enumerate(("l1", "l2", "l3")):
        nodes += [helper.make_node("MatMul", [prev, name + "_w"], [name + "_m"]),
                  helper.make_node("Add", [name + "_m", name + "_b"], [name + "_a"])]
        prev = name + "_a"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [name + "_r"]))
            prev = name + "_r"
    nodes += [helper.make_node("Sigmoid", [prev], ["p"]), helper.make_node("Reshape", ["p", "shape"], [OUTPUT_NAME])]
    graph = helper.make_graph(nodes, "seed_dnn",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {**metadata_for(name="seed-dnn-random", version="0", threshold=threshold),
                                   "kws.weights_sha256": graph_sha256(model)})
    onnx.save(model, str(path))
    return str(path)


def pulsed_tone_wav(path, seconds: float) -> None:
    """A 1 kHz tone switched on and off at 0.4 Hz: the burst model fires in most windows."""
    import soundfile as sf
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 1000 * t) * (np.sin(2 * np.pi * 0.4 * t) > 0), 16000)


def small_queue_subscriber(ctx, endpoint: str, hwm: int, prefix: bytes = b""):
    """A SUB socket with a receive queue of `hwm` messages, subscribed to `prefix`, connected."""
    import zmq
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RECONNECT_IVL, 10)  # connects before the bind: retry soon, however loaded the machine
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    return sock


def read_until(stream, found, timeout: float = 60.0) -> list[str]:
    """Lines of a child's pipe up to and including the first for which found(line) is true:
    a test waits for what the child says, never for a guessed time. The pipe's descriptor
    is read a byte at a time, so no line waits unseen in a Python buffer while select()
    sleeps, and nothing past the awaited line is taken (a later communicate() gets it)."""
    import os
    import select
    import time
    fd, lines, line = stream.fileno(), [], bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"not seen within {timeout} s; got {lines[-5:]}")
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"the child closed its output before the awaited line; got {lines[-5:]}")
        line += byte
        if byte == b"\n":
            lines.append(line.decode(errors="replace"))
            line = bytearray()
            if found(lines[-1]):
                return lines
