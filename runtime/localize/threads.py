"""BLAS threads for the tile search, capped from inside the runtime.

The per-frame tile search is one small matrix product; OpenBLAS threads that fight ONNX Runtime's
for the same cores made it 45 ms instead of 1 ms (`skyloc bench flight-latency`). `skyloc run` sets
OPENBLAS_NUM_THREADS before numpy loads, but the demo and Python callers that build a `Localizer`
themselves never pass through the CLI, so the localizer caps the loaded BLAS itself.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def cap_blas_threads(n: int) -> Any:
    """Cap every loaded BLAS library to n threads, process-wide; 0 leaves them alone.

    Returns threadpoolctl's limiter (`.restore_original_limits()` undoes it) or None when nothing
    was changed (n == 0, or threadpoolctl is missing from a hand-made install: said in the log).
    """
    if n <= 0:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: BLAS threads are not capped (set OPENBLAS_NUM_THREADS=%d "
                    "before starting, or pip install threadpoolctl)", n)
        return None
    return threadpool_limits(limits=n, user_api="blas")
