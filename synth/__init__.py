"""Synthetic cross-view data (`skyloc synth`): procedural world, U1652-layout datasets, simulated flights.

world.py (procedural map) -> runtime.maps (any map) -> camera.py / render.py (perspective views)
-> photometric.py -> dataset.py (University-1652 layout) and flight.py (video + truth.csv); cli.py
is the command. Nothing here imports torch.
"""
