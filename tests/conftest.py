import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import modelkit  # noqa: E402


@pytest.fixture(scope="session")
def burst_model(tmp_path_factory) -> str:
    """A small ONNX model that fires on 1 kHz tone bursts centred in its window."""
    return modelkit.save_model(tmp_path_factory.mktemp("models") / "burst.onnx")
