"""What the stages of `Localizer.step` hand each other: plain values, never attributes one stage
sets for another to read.

    rectify  -> [(scale level, GroundPatch)]
    embed    -> Embedding (one L2-normalised row per rotation of the patch)
    retrieve -> Retrieval (the scale level, the places to register, the best place's score row)
    register -> FixCandidate (filter.py), from Candidate places, given the TrackView
    filter   -> the Fix fields, and the TrackState the next frame's register stage predicts from
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# Where a registered candidate place came from, in the order the register stage tries them.
CandidateKind = Literal["track", "tentative", "prior-scan", "whole-map", "retrieval"]


@dataclass(frozen=True)
class Embedding:
    vectors: np.ndarray        # (R, D) float32, L2-normalised: one row per rotation in `angles`
    angles: tuple[float, ...]  # clockwise turn of the patch for each row, degrees (0 alone: heading known)


@dataclass(frozen=True)
class Place:
    """A distinct retrieved place: its tile and the patch rotation that found it."""

    score: float
    tile: int
    rotation: int  # index into Embedding.angles


@dataclass(frozen=True)
class Retrieval:
    level: float                 # the tile scale level searched
    places: tuple[Place, ...]    # distinct places in the order to register them, best first
    # the best place's rotation row over the searched tiles (scores, tile ids): the retrieval-only
    # position is refined on it and the confidence margin read from it
    best_scores: np.ndarray
    best_ids: np.ndarray


@dataclass(frozen=True)
class Candidate:
    """A place the register stage registers the patch at."""

    kind: CandidateKind
    score: float     # retrieval score of the place (the best one for track / scan / whole-map candidates)
    tile: int
    lat: float       # centre of the map window registered against
    lon: float
    turn_deg: float  # the patch is turned by this much first (heading-up patches, rotation search)


@dataclass(frozen=True)
class TrackState:
    """The last verified fix the filter took into its track."""

    lat: float          # aircraft position
    lon: float
    time_s: float
    heading_deg: float
    confirmed: bool     # the track is confirmed (accepted); a tentative one never vouches alone


@dataclass(frozen=True)
class TrackView:
    """What the register stage reads of the filter for one frame."""

    track: TrackState | None                  # recent enough to predict from (`track_s`), else None
    velocity_ne: tuple[float, float] | None   # the track's velocity, m/s north / east
    has_fix: bool                             # any fix reached the filter (acquisition is over)
