"""The TOML configuration file: every command-line option, under its long name.

    # /etc/kws-stream/config.toml
    device = "pulse"
    model = "/var/lib/kws-stream/model.onnx"
    pub = "ipc:///run/kws-stream/events"
    hop_seconds = 0.5
    status_interval = 10

Keys use underscores (`hop_seconds` for `--hop-seconds`). Options given on the command
line override the file.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

DEFAULT_PATH = Path("/etc/kws-stream/config.toml")

# key -> accepted types; the file may set any of these.
KEYS: dict[str, tuple[type, ...]] = {
    "device": (str, int), "model": (str,), "threshold": (float, int), "hop_seconds": (float, int),
    "refractory": (float, int), "pub": (str,), "quiet": (bool,), "log_level": (str,),
    "status_interval": (float, int), "jobs": (int,), "realtime": (bool,), "csv": (str,),
    "allow_remote": (bool,), "curve_secret": (str,), "curve_clients": (str,), "model_sha256": (str,),
    "drain_seconds": (float, int),
}


class ConfigError(Exception):
    pass


def load(path: str | Path) -> dict:
    """Read and check a config file; raises ConfigError with one line on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}; known: {', '.join(sorted(KEYS))}")
        types = KEYS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{path}: {key} must be {names}, got {type(value).__name__} {value!r}")
    if "device" in data:
        data["device"] = str(data["device"])
    return data
