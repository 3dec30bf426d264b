"""The registrar registry: a name -> the plugin module and class that registers with it.

Plugins are imported by name when asked for (hloc's `dynamic_load`), so this module imports none of
them and no plugin imports it back: adding a registrar is one row here and one module beside it.
"""
from __future__ import annotations

import importlib
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.runtime.register.base import Registrar

# name -> (module, class, options the name implies)
REGISTRARS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ncc": ("skyloc.runtime.register.ncc", "NccRegistrar", {}),
    "sift": ("skyloc.runtime.register.features", "FeatureRegistrar", {"detector": "sift"}),
    "orb": ("skyloc.runtime.register.features", "FeatureRegistrar", {"detector": "orb"}),
    "lightglue": ("skyloc.runtime.register.features", "LightGlueRegistrar", {}),
    "aliked": ("skyloc.runtime.register.features", "LightGlueRegistrar", {"extractor": "aliked"}),
    "disk": ("skyloc.runtime.register.features", "LightGlueRegistrar", {"extractor": "disk"}),
    "xfeat": ("skyloc.runtime.register.learned", "LearnedRegistrar", {}),
    "learned": ("skyloc.runtime.register.learned", "LearnedRegistrar", {}),
}


def registrar_class(name: str) -> type[Registrar]:
    """The plugin class registered under `name`."""
    key = str(name).lower()
    if key not in REGISTRARS:
        raise SkylocError(f"unknown registrar {name!r}: use {', '.join(REGISTRARS)}")
    module, cls, _ = REGISTRARS[key]
    return getattr(importlib.import_module(module), cls)


def make_registrar(name: str = "ncc", **conf: Any) -> Registrar:
    """The registrar `name` with its options (the plugin's Conf fields)."""
    key = str(name).lower()
    cls = registrar_class(key)
    return cls(**{**REGISTRARS[key][2], **conf})
