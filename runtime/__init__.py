"""Onboard runtime: everything that flies. Never imports torch or training."""
