"""ONNX files as kws-stream loads them: their SHA-256, and the sessions over them.

Both choices keep the live daemon small (measured with benchmarks/bench_live.py):
- SHA-256 comes from CPython's own implementation where it has one. hashlib's maps
  OpenSSL's libcrypto, 3.3 MB of resident memory the daemon has no other use for; the
  digests are the same, and any other interpreter falls back to hashlib.
- Every session of a process allocates from one shared CPU arena instead of one arena
  each: about 2 MB less once the front end's networks and the model have run.
"""
from __future__ import annotations

from functools import lru_cache

try:
    from _sha2 import sha256  # CPython 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()


def open_session(data: bytes, threads: int = 1):
    """An onnxruntime session over the model bytes: CPU, `threads` threads for one
    operator and none across operators, warnings and errors only as exceptions."""
    import onnxruntime as ort
    _share_one_arena(ort)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def _share_one_arena(ort) -> None:
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's defaults
