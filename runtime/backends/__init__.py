"""Inference backends behind one interface: `open_backend(model, "auto"|"onnxruntime"|"tensorrt")`.

Importing this package registers the built-in backends but loads no runtime library;
onnxruntime / tensorrt / cuda-python (or pycuda) are imported when a model is opened.
"""
from __future__ import annotations

from skyloc.runtime.backends.base import BACKENDS, Backend, l2_normalize, register_backend
from skyloc.runtime.backends.open import open_backend

__all__ = ["BACKENDS", "Backend", "l2_normalize", "open_backend", "register_backend"]
