"""Live input through PortAudio (sounddevice).

A reader thread takes each block from PortAudio's buffer once a whole one is there (it
sleeps until then) and puts it in a bounded queue; the daemon's loop takes blocks from the
queue. No PortAudio callback: its cffi trampoline would need memory written and then
executed, which a hardened service denies (systemd's MemoryDenyWriteExecute=yes). Input
overflows and blocks dropped because the queue was full are counted. A device that cannot
run at 16 kHz is opened at its own rate, and the daemon resamples.
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time

import numpy as np

from .frontends import SAMPLE_RATE

log = logging.getLogger(__name__)

# PortAudio block: 200 ms, in a device buffer of three blocks. Through ALSA's PulseAudio
# plugin the buffer, not the block, sets the cost of polling (measured with 200 ms blocks:
# PortAudio's "high" latency, a 0.4 s buffer, 5.6% of a core; a 0.6 s buffer 0.13%, with
# blocks still every 200 ms, none older than 5 ms when delivered). A window is scored once a
# second, so the block adds little delay against it. A deeper buffer polls less but hands the
# blocks over in bursts, at least 200 ms late with 1.2 s (benchmarks/bench_device_buffer.py).
BLOCK_SECONDS = 0.2
BUFFER_SECONDS = 3 * BLOCK_SECONDS
QUEUE_BLOCKS = 50  # 10 s of audio may wait for the worker before blocks are dropped
PA_INPUT_OVERFLOWED = -9981  # PortAudio's code for an input overflow, which ALSA may raise on a second xrun
STALL_SECONDS = 2.0  # no audio for this long means the device has gone
FIRST_AUDIO_SECONDS = 5.0  # but a device just opened may take longer (a PulseAudio monitor: about 1.9 s)
READER_STOP_SECONDS = 1.0  # how long close() waits for the reader thread (its reads are of audio already held)


class DeviceError(Exception):
    """The input device cannot be opened, or stopped delivering audio."""


class NoSuchDevice(DeviceError):
    """No input device matches the name or index (now: one may appear later)."""


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise DeviceError(f"sounddevice is not usable ({e}); install kws-stream[mic] and libportaudio2") from e
    return sd


def list_devices() -> str:
    devices = _sounddevice().query_devices()
    return str(devices) if len(devices) else "no audio devices (PortAudio finds none)"


def check_input(text: str | None) -> None:
    """At start-up: DeviceError if PortAudio is missing or the name is empty or ambiguous;
    NoSuchDevice if no input device matches `text`. (A device that matched once and later
    vanishes is the daemon's to retry.)"""
    sd = _sounddevice()
    if text is not None and not text.strip():
        raise DeviceError("--device: an empty name; give a name or an index, or leave it out for the default")
    device = parse_device(text)
    try:
        sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines()]
        if lines and lines[0].startswith("Multiple"):  # (listed after its first line); waiting cannot settle it
            raise DeviceError(f"{text}: matches several input devices ({', '.join(lines[1:])}); give more of "
                               "the name, or the index (kws-stream --list-devices)") from None
        reason = f"no input device has index {device}" if isinstance(device, int) else \
            f"no input device's name matches {device!r}" if device is not None else "no default input device"
        raise NoSuchDevice(f"{text or 'default'}: {reason}; see kws-stream --list-devices") from None


def parse_device(text: str | None):
    """'3' -> 3 (an index), 'pulse' -> 'pulse' (a name), None -> the default input."""
    if text is None or text == "default":
        return None
    return int(text) if text.isdigit() else text


def _release_alsa_config() -> None:
    """Drop ALSA's parsed configuration once the stream is open. PortAudio's device scan
    loads every PCM plugin the configuration names (with libasound2-plugins: a52 and its
    libavcodec, jack, speex, upmix...) and ALSA keeps them until this call; the open stream
    holds its own references. Measured on the daemon: RSS 103.0 -> 91.9 MB. ALSA
    parses its files anew at the next open, and PortAudio makes the same call when it ends."""
    import ctypes  # only here: the daemon loads it once, after capture has started

    try:
        ctypes.CDLL("libasound.so.2").snd_config_update_free_global()
    except (OSError, AttributeError) as e:  # another ALSA build: only the memory is lost
        log.debug("ALSA configuration not released: %s", e)


def _close_stream(stream, name: str) -> None:
    try:
        stream.abort()
        stream.close()
    except Exception as e:  # noqa: BLE001 - PortAudio may fail to close a device that is gone
        log.debug("closing %s: %s", name, e)


def _keep_portaudio_at_exit() -> None:
    """With a reader left in a read, terminating PortAudio at exit (sounddevice's atexit
    hook) would close its stream under it: the process's exit releases the device instead."""
    handler = getattr(_sounddevice(), "_exit_handler", None)  # imported already: a stream was opened
    if handler is not None:
        atexit.unregister(handler)


class MicSource:
    def __init__(self, device: str | None = None):
        self.device = parse_device(device)
        self.name = str(device or "default")
        self.rate = SAMPLE_RATE
        self.overflows = 0
        self.queue_drops = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_BLOCKS)
        self._stream = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failure: Exception | None = None  # why the reader thread ended, if the device failed
        self._lock = threading.Lock()
        self._left_behind: list[tuple[threading.Thread, object]] = []  # readers close() gave up on, their streams
        self._last_audio = time.monotonic()
        self._stall = FIRST_AUDIO_SECONDS

    def open(self) -> None:
        self.close()  # a stream and reader left open are ended first
        sd = _sounddevice()
        self._left_behind = [(t, st) for t, st in self._left_behind if t.is_alive()]
        if not self._left_behind:  # (re-scanning would close a left-behind reader's stream under its read)
            sd._terminate()  # re-scan devices: one that vanished may be back under a new index
            sd._initialize()
        try:
            try:
                sd.check_input_settings(self.device, channels=1, samplerate=SAMPLE_RATE, dtype="float32")
                self.rate = SAMPLE_RATE
            except (ValueError, sd.PortAudioError):
                self.rate = int(sd.query_devices(self.device, "input")["default_samplerate"])
            self._stream = sd.InputStream(device=self.device, channels=1, samplerate=self.rate, dtype="float32",
                                          blocksize=int(self.rate * BLOCK_SECONDS), latency=BUFFER_SECONDS)
            self._stream.start()
            opened = sd.query_devices(self._stream.device)
            alsa = sd.query_hostapis(opened["hostapi"])["name"] == "ALSA"
        except (ValueError, sd.PortAudioError) as e:
            self.close()
            raise DeviceError(f"{self.name}: cannot open input ({e})") from e
        if alsa:
            _release_alsa_config()
        self._last_audio = time.monotonic()
        self._stall = FIRST_AUDIO_SECONDS
        self._start_reader(self._stream, sd.PortAudioError)
        log.info("capturing from %s at %d Hz%s", self.name, self.rate,
                 "" if opened["name"] == self.name else f" (the device {opened['name']!r})")

    def _start_reader(self, stream, errors: type[Exception]) -> None:
        """A reader thread for `stream`, with its own stop flag and queue: one that close()
        leaves behind touches nothing of the next stream's."""
        self._stopping, self._queue, self._failure = threading.Event(), queue.Queue(maxsize=QUEUE_BLOCKS), None
        self._reader = threading.Thread(target=self._pump, args=(stream, errors, self._stopping, self._queue,
                                                                 self.rate), name="kws-capture", daemon=True)
        self._reader.start()

    def _pump(self, stream, errors: type[Exception], stopping: threading.Event, blocks: queue.Queue,
              rate: int) -> None:
        """The reader thread: a block as soon as PortAudio holds a whole one. It ends on
        close(), or when the device fails: read() then says why at once."""
        block = stream.blocksize
        try:
            while not stopping.is_set():
                try:
                    waiting = stream.read_available
                    if waiting < block:
                        stopping.wait((block - waiting) / rate)
                        continue
                    data, overflowed = stream.read(block)
                except Exception as e:  # noqa: BLE001 - whatever ends capture, the daemon hears of it
                    if stopping.is_set():
                        return
                    if isinstance(e, errors) and PA_INPUT_OVERFLOWED in e.args[1:2]:  # ALSA's second xrun
                        self.overflows += 1
                        continue
                    self._failure = e
                    return
                if stopping.is_set():
                    return
                self._last_audio = time.monotonic()  # when the device delivered, however far behind the worker is
                self.overflows += overflowed
                try:
                    blocks.put_nowait(data[:, 0].copy())
                except queue.Full:
                    self.queue_drops += 1
        finally:
            with self._lock:  # left behind by close(): the stream is this thread's alone to close
                mine = any(st is stream for _, st in self._left_behind)
            if mine:
                _close_stream(stream, self.name)

    def read(self, timeout: float) -> np.ndarray | None:
        """The next block (float32 mono at self.rate), or None after `timeout` seconds."""
        try:
            block = self._queue.get(timeout=timeout)
        except queue.Empty:
            if self._failure is not None:
                raise DeviceError(f"{self.name}: capture ended ({self._failure})") from None
            if time.monotonic() - self._last_audio > self._stall or not self._stream_active():
                raise DeviceError(f"{self.name}: no audio for {self._stall:g} s, the device stopped") from None
            return None
        self._stall = STALL_SECONDS
        return block

    def _stream_active(self) -> bool:
        return self._stream is not None and self._stream.active

    def close(self) -> None:
        if self._reader is not None:  # first the reader, which may be in a read of this stream
            self._stopping.set()
            self._reader.join(READER_STOP_SECONDS)
            with self._lock:
                if self._reader.is_alive():  # a read PortAudio never returns: the reader closes its stream
                    log.warning("%s: the capture thread did not stop within %g s (a read that never returned); "
                                "left behind with its stream", self.name, READER_STOP_SECONDS)
                    self._left_behind.append((self._reader, self._stream))
                    self._stream = None
                    _keep_portaudio_at_exit()
            self._reader = None
        if self._stream is not None:
            _close_stream(self._stream, self.name)
            self._stream = None
        while not self._queue.empty():
            self._queue.get_nowait()
