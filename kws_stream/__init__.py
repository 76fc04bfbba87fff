"""kws-stream: real-time detection of «не слышу» / «не слышно» in call audio.

Embedding the detector in another program::

    from kws_stream import KwsModel, Spotter

    spotter = Spotter(KwsModel(), stream="line-1")   # the packaged model
    for chunk in chunks:                               # float mono 16 kHz, any size
        for detection in spotter.feed(chunk):
            print(detection.event())
    spotter.finish()                                   # end of stream: score the tail
"""
__version__ = "0.1.0"

from .audio import AudioError, iter_file, read_file
from .model import KwsModel, ModelError
from .spotter import Detection, Detector, Spotter, SpotterConfig

__all__ = ["AudioError", "Detection", "Detector", "KwsModel", "ModelError", "Spotter", "SpotterConfig",
           "iter_file", "read_file", "__version__"]
