"""Top-5 retrieval grids (paper Fig. 10): one row per query, the query first (grey frame),
then its five best gallery images framed green (true match) or red (false match)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from skyloc.core import metrics
from skyloc.training.data import read_rgb

TOP = 5
TILE = 96  # image side in the grid
BORDER = 4  # frame width, drawn around the image
GAP = 8  # between cells
SEP = 16  # extra space between the query and its results
GREEN, RED, GREY, WHITE = (0, 200, 0), (220, 0, 0), (128, 128, 128), (255, 255, 255)


def cell_box(row: int, col: int, tile: int = TILE) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a framed cell (exclusive end); col 0 is the query, 1..TOP the results."""
    cell = tile + 2 * BORDER
    x0 = GAP + col * (cell + GAP) + (SEP if col > 0 else 0)
    y0 = GAP + row * (cell + GAP)
    return x0, y0, x0 + cell, y0 + cell


def pick_queries(num_queries: int, n: int) -> list[int]:
    """n query indices spread evenly over the query list (deterministic)."""
    if num_queries <= 0 or n <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, num_queries - 1, min(n, num_queries))})


def retrieval_grid(query_paths: Sequence[str], results: Sequence[Sequence[str]], matches: Sequence[Sequence[bool]],
                   out_path: str | Path, tile: int = TILE) -> Path:
    """Draw one row per query: query image, then its ranked results framed by `matches`."""
    rows = len(query_paths)
    x1, y1 = cell_box(rows - 1, TOP, tile)[2:]
    canvas = Image.new("RGB", (x1 + GAP, y1 + GAP), WHITE)
    draw = ImageDraw.Draw(canvas)

    def put(row: int, col: int, path: str, colour: tuple[int, int, int]) -> None:
        x0, y0, xe, ye = cell_box(row, col, tile)
        draw.rectangle([x0, y0, xe - 1, ye - 1], fill=colour)
        im = Image.fromarray(read_rgb(path)).resize((tile, tile), Image.Resampling.BILINEAR)
        canvas.paste(im, (x0 + BORDER, y0 + BORDER))

    for r, qp in enumerate(query_paths):
        put(r, 0, qp, GREY)
        for c, (gp, ok) in enumerate(zip(results[r][:TOP], matches[r][:TOP]), start=1):
            put(r, c, gp, GREEN if ok else RED)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path


def save_retrieval_grids(out_dir: str | Path, data: dict[str, Any], n_queries: int = 4) -> list[Path]:
    """One PNG per direction from the evaluation's main-row data ({direction: {"query": (feats,
    labels, paths), "gallery": (...)}}): DIR/drone_to_satellite_top5.png, ..."""
    written = []
    for direction, d in data.items():
        qf, ql, qp = d["query"]
        gf, gl, gp = d["gallery"]
        idx = pick_queries(len(ql), n_queries)
        if not idx:
            continue
        order = metrics.ranking(qf[idx], gf)[:, :TOP]
        gl_arr = np.asarray(gl)
        results = [[gp[j] for j in row] for row in order]
        matches = [[bool(gl_arr[j] == ql[i]) for j in row] for i, row in zip(idx, order)]
        name = direction.replace("->", "_to_") + f"_top{TOP}.png"
        written.append(retrieval_grid([qp[i] for i in idx], results, matches, Path(out_dir) / name))
    return written
