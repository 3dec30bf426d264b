"""The TensorRT timing cache file and the record of what wrote it.

TensorRT accepts a timing cache from another TensorRT version or GPU with a warning and builds
on (NVIDIA/TensorRT#3566, #1413), and the builder would then overwrite the file with its own.
So each cache skyloc writes gets a sidecar (`CACHE.json`: TensorRT version, GPU compute
capability, sha256 of the cache bytes), and a cache is read only when its sidecar matches this
machine and the bytes are the ones recorded. Anything else is refused before the build, with
the file left as it is: a cache with no record (e.g. from trtexec), one for another TensorRT or
GPU, one changed after it was written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from skyloc.core.atomic import write_bytes_atomic, write_json_atomic
from skyloc.core.errors import SkylocError

FORMAT = "skyloc-timing-cache/1"


def cache_sidecar_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def _refuse(cache: Path, why: str) -> SkylocError:
    return SkylocError(f"timing cache {cache}: {why}; TensorRT would only warn and then overwrite it. Delete it "
                       "(and its .json) or pass another --timing-cache (nothing was written)")


def read_timing_cache(cache: Path, trt_version: str, compute_capability: str) -> bytes:
    """The cache's bytes when it was written by this TensorRT version for this GPU's compute
    capability; b"" when the file does not exist yet; SkylocError otherwise."""
    cache = Path(cache)
    if not cache.exists():
        return b""
    if not cache.is_file():
        raise _refuse(cache, "is not a file")
    side = cache_sidecar_path(cache)
    if not side.is_file():
        raise _refuse(cache, f"has no record of the TensorRT version and GPU that wrote it ({side.name} missing)")
    try:
        rec = json.loads(side.read_text())
        fmt, version, cc, digest = rec["format"], rec["tensorrt_version"], rec["compute_capability"], rec["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _refuse(cache, f"its record {side.name} is unreadable ({type(exc).__name__}: {exc})") from None
    if fmt != FORMAT:
        raise _refuse(cache, f"its record {side.name} has format {fmt!r}, expected {FORMAT!r}")
    if str(version) != str(trt_version):
        raise _refuse(cache, f"was written by TensorRT {version}, this is TensorRT {trt_version}")
    if str(cc) != str(compute_capability):
        raise _refuse(cache, f"was written for compute capability {cc}, this GPU is {compute_capability}")
    data = cache.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise _refuse(cache, f"changed after {side.name} was written (sha256 differs)")
    return data


def write_timing_cache(cache: Path, data: bytes, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Write the cache and its record. The old record goes first, so an interrupted write leaves
    a cache without a record (refused next time), never a record describing other bytes."""
    cache = Path(cache)
    side = cache_sidecar_path(cache)
    side.unlink(missing_ok=True)
    write_bytes_atomic(cache, data)
    write_json_atomic(side, {"format": FORMAT, "tensorrt_version": str(trt_version), "gpu_name": gpu_name,
                             "compute_capability": str(compute_capability),
                             "sha256": hashlib.sha256(data).hexdigest()}, sort_keys=True)
