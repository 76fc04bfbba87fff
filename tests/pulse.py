"""A private PulseAudio server for tests and benchmarks of the live path."""
import os
import subprocess
import time
from pathlib import Path


class Pulse:
    """A private PulseAudio server with a null sink whose monitor is the default source."""

    def __init__(self, runtime: Path):
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PULSE_RUNTIME_PATH=str(runtime / "pulse"))
        runtime.mkdir(mode=0o700, exist_ok=True)

    def start(self) -> None:
        subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "--system=false", "-n",
                        "--load=module-null-sink sink_name=kws rate=16000", "--load=module-native-protocol-unix"],
                       env=self.env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "PulseAudio did not come up"
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-source", "kws.monitor"], env=self.env, check=True, timeout=10)

    def stop(self) -> None:
        subprocess.run(["pulseaudio", "-k"], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "PulseAudio did not stop"
            time.sleep(0.1)

    def play(self, path) -> None:
        subprocess.run(["paplay", "--device=kws", str(path)], env=self.env, check=True, timeout=60)
