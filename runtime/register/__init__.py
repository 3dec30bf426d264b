"""Registrars: align a rectified frame with the map imagery around a candidate place (one plugin each, see registry.py)."""
