"""The live daemon: a device, one Spotter, events, heartbeats, systemd notifications.

It runs until SIGTERM or SIGINT. A device that fails is reported and reopened with
backoff; SIGHUP reloads the model (a bad new model keeps the old one running).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Callable

import numpy as np

from .audio import AudioError, Resampler
from .events import Heartbeat, error_event, heartbeat_event
from .mic import DeviceError, MicSource
from .model import KwsModel, ModelError
from .spotter import Spotter, SpotterConfig

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0


class Notifier:
    """sd_notify over the NOTIFY_SOCKET datagram socket; silent when not under systemd."""

    def __init__(self):
        path = os.environ.get("NOTIFY_SOCKET")
        self._address = None
        if path:
            self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_interval = usec / 2e6 if usec else None
        self._next_watchdog = 0.0

    def send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(message.encode(), self._address)
            except OSError as e:
                log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e)

    def watchdog(self) -> None:
        if self.watchdog_interval is not None and time.monotonic() >= self._next_watchdog:
            self.send("WATCHDOG=1")
            self._next_watchdog = time.monotonic() + self.watchdog_interval


def reload_model(current: KwsModel, path: str | None, sha256: str | None, spotters: list[Spotter], publisher,
                 stream: str, config: SpotterConfig) -> KwsModel | None:
    """SIGHUP: the model file read again and put in every spotter, from its next window on;
    or, when it cannot be (a bad file, another front end, a gate turned on or off), None,
    with one error event, and every spotter keeps the running model. The refusals depend
    on the model and the shared config only, so the first spotter's check holds for all."""
    try:
        model = KwsModel(path, expect_sha256=sha256)
        if model.front_end_class is not current.front_end_class:
            raise ModelError(f"{model.path}: front end {model.info.front_end} differs; restart to switch")
        for spotter in spotters:
            spotter.replace_model(model)  # checks first: a refused model changes nothing
    except (ModelError, ValueError) as e:
        log.error("reload kept the running model: %s", e)
        publisher.publish(error_event(stream, f"reload kept the running model: {e}"))
        return None
    log.info("reloaded model %s %s (SHA-256 %s, speech gate %g dB)", model.info.name, model.info.version,
             model.sha256, config.gate_for(model))
    return model


def reload_facts(model: KwsModel, config: SpotterConfig, state: str) -> dict:
    """What a `reloaded` heartbeat adds: the model now running and the speech gate in force."""
    return {"model_sha256": model.sha256, "gate_margin_db": config.gate_for(model)} if state == "reloaded" else {}


class Daemon:
    def __init__(self, model: KwsModel, config: SpotterConfig, publisher, device: str | None,
                 stop: Callable[[], bool], status_interval: float = 10.0, model_path: str | None = None,
                 model_sha256: str | None = None):
        self.model, self.config, self.publisher, self.stop = model, config, publisher, stop
        self.source = MicSource(device)
        self.stream = f"device:{self.source.name}"
        self.spotter = Spotter(model, stream=self.stream, config=config)
        self.status_interval = status_interval
        self.model_path = model_path
        self.model_sha256 = model_sha256  # a pin holds for reloads too
        self.notifier = Notifier()
        self.device_state = "closed"
        self.device_error: str | None = None
        self.nonfinite_blocks = 0
        self._reload = False

    def request_reload(self, signum=None, frame=None) -> None:
        self._reload = True

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self.request_reload)
        self.notifier.send("READY=1\nSTATUS=starting capture")
        self._next_status = time.monotonic() + self.status_interval
        backoff = BACKOFF_FIRST
        while not self.stop():
            self._heartbeat_when_due()
            if self.device_state != "open" and not self._open():
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                block = self.source.read(timeout=0.2)
            except DeviceError as e:  # a device that opens but delivers nothing is retried with backoff too
                self._fail(str(e))
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if block is not None:
                if self.device_error is not None:  # audio again: the next failure is news
                    self.device_error, backoff = None, BACKOFF_FIRST
                self._process(block)
            if self._reload:
                self._reload_model()
            self.notifier.watchdog()
        self.notifier.send("STOPPING=1")
        self.source.close()
        self.device_state = "closed"
        self.heartbeat(state="stopped")
        return 0

    def _open(self) -> bool:
        try:
            self.source.open()
            self.resample = Resampler(self.source.rate)
        except (DeviceError, AudioError) as e:
            self._fail(f"{self.source.name}: {e}" if isinstance(e, AudioError) else str(e))
            return False
        self.device_state = "open"  # (the error is forgotten at the first block: a device may open and stay mute)
        self.heartbeat(state="capturing")
        self.notifier.send(f"STATUS=capturing from {self.source.name}")
        return True

    def _fail(self, message: str) -> None:
        if message == self.device_error:  # a reopen failing as the last did: said once (heartbeats carry it)
            log.debug("%s (again)", message)
        else:
            log.error("%s", message)
            self.publisher.publish(error_event(self.stream, message))
        self.source.close()
        self.device_state = "failed"
        self.device_error = message
        self.notifier.send(f"STATUS={message}")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop() and time.monotonic() < end:
            time.sleep(max(0.0, min(0.1, end - time.monotonic())))
            self.notifier.watchdog()
            self._heartbeat_when_due()  # a failing device still gets heartbeats, which say so

    def _heartbeat_when_due(self) -> None:
        if time.monotonic() >= self._next_status:
            self.heartbeat()
            self._next_status = time.monotonic() + self.status_interval

    def _process(self, block: np.ndarray) -> None:
        if not np.isfinite(block).all():
            self.nonfinite_blocks += 1
            if self.nonfinite_blocks == 1:
                self.publisher.publish(error_event(self.stream, "NaN or Inf samples from the device; zeroed"))
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        for det in self.spotter.feed(self.resample(block.astype(np.float64))):
            self.publisher.publish(det.event())

    def _reload_model(self) -> None:
        self._reload = False
        model = reload_model(self.model, self.model_path, self.model_sha256, [self.spotter], self.publisher,
                             self.stream, self.config)
        if model is not None:
            self.model = model
            self.heartbeat(state="reloaded")

    def heartbeat(self, state: str = "running") -> None:
        sp = self.spotter
        self.publisher.publish(heartbeat_event(Heartbeat(
            state, self.stream, self.device_state, sp.audio_seconds, sp.detections, self.source.overflows,
            self.source.queue_drops, self.publisher.dropped, self.model.info.name, self.model.info.version,
            self.device_error if self.device_state == "failed" else None, windows=sp.windows, gated=sp.gated,
            bad_scores=sp.bad_scores,
            **reload_facts(self.model, self.config, state))))
