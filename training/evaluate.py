"""University-1652 evaluation: feature extraction and the paper's evaluation tables.

Drone->Satellite ranks gallery_satellite (test locations plus distractors) for every
query_drone image; Satellite->Drone ranks gallery_drone for every query_satellite image.
Per-head features are extracted once per (folder, size, shift) and combined in numpy, so the
nine rows of Table 7 cost one pass over the images; the combination is exactly `model.embed`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from skyloc.core.atomic import write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core import metrics
from skyloc.training.data import U1652Folder, distance_groups, eval_transform, unwrap_worker_error, view_dir

DIRECTIONS = {"drone->satellite": ("query_drone", "gallery_satellite"),
              "satellite->drone": ("query_satellite", "gallery_drone")}
EVAL_FORMAT = "skyloc-eval/1"


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(model: torch.nn.Module, folder: U1652Folder, batch_size: int, progress: bool, workers: int):
    dev = _device_of(model)
    loader = DataLoader(folder, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    bar = tqdm(total=len(folder), unit="img", desc=f"{folder.view}", disable=not progress, leave=False)
    it = iter(loader)
    try:
        for x, _ in it:
            yield x.to(dev, non_blocking=True)
            bar.update(len(x))
    except SkylocError as exc:
        raise unwrap_worker_error(exc) from None
    finally:
        bar.close()
        # After an error the traceback keeps the iterator alive; when the garbage collector
        # finally drops it, worker shutdown waits out a 5 s timeout. Stop the workers now.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


@torch.no_grad()
def extract_head_features(model: torch.nn.Module, folder: U1652Folder, batch_size: int = 32, flip: bool = True,
                          progress: bool = True, workers: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Raw bottleneck outputs of every head, (N, num_heads, 512) float32; with `flip` each head's
    output is summed over the image and its mirror (University-1652 protocol)."""
    model.eval()
    out = []
    for x in _batches(model, folder, batch_size, progress, workers):
        feats = model.head_features(x)
        if flip:
            feats = [a + b for a, b in zip(feats, model.head_features(torch.flip(x, dims=[3])))]
        out.append(torch.stack(feats, dim=1).float().cpu().numpy())
    return np.concatenate(out), folder.labels, [str(p) for p, _ in folder.samples]


def combine_heads(raw: np.ndarray, weights: Sequence[float], parts: Sequence[int] | None = None) -> np.ndarray:
    """Same as MSBA.embed on raw head outputs: per-head L2, times its weight, concat, L2."""
    parts = list(range(raw.shape[1])) if parts is None else list(parts)
    sel = [metrics.l2_normalize(raw[:, h]) * np.float32(weights[h]) for h in parts]
    return metrics.l2_normalize(np.concatenate(sel, axis=1))


def head_weights(model: torch.nn.Module, reweight: bool | None) -> list[float]:
    cfg = model.cfg
    use = cfg.reweight if reweight is None else reweight
    return cfg.head_weights() if use else [1.0] * cfg.num_heads


@torch.no_grad()
def extract_features(model: torch.nn.Module, folder: U1652Folder, batch_size: int = 32, flip: bool = True,
                     parts: list[int] | None = None, reweight: bool | None = None, progress: bool = True,
                     workers: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Retrieval embeddings (model.embed) of a folder: (N, D) float32, location ids, file paths."""
    model.eval()
    out = [model.embed(x, flip=flip, parts=parts, reweight=reweight).float().cpu().numpy()
           for x in _batches(model, folder, batch_size, progress, workers)]
    return np.concatenate(out), folder.labels, [str(p) for p, _ in folder.samples]


def open_folder(data_dir: str | Path, view: str, size: int, shift_px: int = 0) -> U1652Folder:
    d = view_dir(data_dir, view)
    return U1652Folder(d.parent, d.name, eval_transform(size, shift_px))


# --------------------------------------------------------------------------- tables
@dataclass
class PartSpec:
    name: str
    parts: list[int] | None  # None = all heads
    reweight: bool | None  # None = the checkpoint's setting


@dataclass
class EvalOptions:
    image_size: int | None = None  # None = the checkpoint's size
    reweight: bool | None = None  # main row and custom part rows; None = the checkpoint's setting
    part_rows: list[str] = field(default_factory=list)  # Table 7 specs: "table7", "all", "global", "0,1"
    shifts: list[int] = field(default_factory=list)  # Table 4
    groups: bool = False  # Table 5
    sizes: list[int] = field(default_factory=list)  # test-time resizes of this checkpoint (not Table 6)
    flip: bool = True
    batch_size: int = 32
    workers: int = 0
    progress: bool = True


def table7_specs(cfg: Any) -> list[PartSpec]:
    """P1..Pn (one block each), Global, All, All+RW (paper Table 7)."""
    rows = [PartSpec(f"P{i + 1}", [i], False) for i in range(cfg.num_blocks)]
    if cfg.global_branch:
        rows.append(PartSpec("Global", [cfg.num_blocks], False))
    rows.append(PartSpec("All", None, False))
    if cfg.global_branch:
        rows.append(PartSpec("All+RW", None, True))
    return rows


def parse_part_specs(specs: Sequence[str], cfg: Any, reweight: bool | None = None) -> list[PartSpec]:
    """'table7' -> all Table 7 rows; 'all'; 'global'; or head indices '6', '0,1' (blocks first,
    global last)."""
    rows: list[PartSpec] = []
    for spec in specs:
        s = str(spec).strip().lower()
        if s == "table7":
            rows += table7_specs(cfg)
        elif s == "all":
            rows.append(PartSpec("All", None, reweight))
        elif s == "global":
            if not cfg.global_branch:
                raise SkylocError("--parts global: this model has no global branch")
            rows.append(PartSpec("Global", [cfg.num_blocks], reweight))
        else:
            try:
                heads = [int(t) for t in s.split(",") if t.strip()]
            except ValueError:
                raise SkylocError(f"--parts {spec!r}: give 'table7', 'all', 'global' or head indices like 0,1") from None
            for h in heads:
                if not 0 <= h < cfg.num_heads:
                    raise SkylocError(f"--parts {spec!r}: head {h} out of range 0..{cfg.num_heads - 1} "
                                      f"({cfg.num_blocks} blocks{', then global' if cfg.global_branch else ''})")
            names = ["Global" if cfg.global_branch and h == cfg.num_blocks else f"P{h + 1}" for h in heads]
            rows.append(PartSpec("+".join(names), heads or None, reweight))
    return rows


class _Runner:
    """Feature cache for one model and dataset; evaluates rows from cached per-head features."""

    def __init__(self, model: torch.nn.Module, data_dir: Path, opts: EvalOptions):
        self.model, self.data_dir, self.opts = model, Path(data_dir), opts
        self.cache: dict[tuple[str, int, int], tuple[np.ndarray, list[str], list[str]]] = {}

    def raw(self, view: str, size: int, shift: int = 0):
        key = (view, size, shift)
        if key not in self.cache:
            folder = open_folder(self.data_dir, view, size, shift)
            self.cache[key] = extract_head_features(self.model, folder, self.opts.batch_size, self.opts.flip,
                                                    self.opts.progress, self.opts.workers)
        return self.cache[key]

    def features(self, view: str, size: int, shift: int, spec: PartSpec):
        raw, labels, paths = self.raw(view, size, shift)
        return combine_heads(raw, head_weights(self.model, spec.reweight), spec.parts), labels, paths

    def row(self, size: int, shift: int, spec: PartSpec, keep: bool | str = False) -> dict[str, Any]:
        rw = self.model.cfg.reweight if spec.reweight is None else spec.reweight
        res: dict[str, Any] = {"name": spec.name, "parts": spec.parts, "reweight": rw, "image_size": size,
                               "shift_px": shift}
        for direction, (qv, gv) in DIRECTIONS.items():
            qf, ql, qp = self.features(qv, size, shift, spec)  # the shift moves queries only
            gf, gl, gp = self.features(gv, size, 0, spec)
            pq = metrics.per_query(qf, ql, gf, gl)
            res[direction] = metrics.summarize(pq, num_gallery=len(gl))
            if keep:  # features only when asked: for the full test set they are ~1.3 GB
                feats = (qf, gf) if keep == "features" else (None, None)
                res.setdefault("_data", {})[direction] = dict(query=(feats[0], ql, qp), gallery=(feats[1], gl, gp),
                                                              per_query=pq)
        return res


def run_tables(model: torch.nn.Module, data_dir: str | Path, opts: EvalOptions,
               keep_features: bool = True) -> dict[str, Any]:
    """Main row plus the requested tables. The main row keeps labels, paths, per-query results
    and (with `keep_features`) its features under the key "_data", for saving and visualisation."""
    cfg = model.cfg
    size = int(opts.image_size or cfg.image_size)
    main = PartSpec("All", None, opts.reweight)
    part_rows = parse_part_specs(opts.part_rows, cfg, opts.reweight)
    for s in opts.shifts:
        if not 0 <= s < size:
            raise SkylocError(f"--shift {s} must be in 0..{size - 1} (pixels at the {size} px input)")
    run = _Runner(model, Path(data_dir), opts)
    out: dict[str, Any] = {"main": run.row(size, 0, main, keep="features" if keep_features else True), "tables": {}}
    if part_rows:
        out["tables"]["parts"] = [run.row(size, 0, s) for s in part_rows]
    if opts.shifts:
        out["tables"]["shift"] = [run.row(size, s, main) for s in opts.shifts]
    if opts.groups:
        d = out["main"]["_data"]["drone->satellite"]
        groups = distance_groups(d["query"][1])
        rows = []
        for name in ("all", "short", "middle", "long"):
            mask = None if name == "all" else groups == name
            rows.append({"name": name, "drone->satellite": metrics.summarize(
                d["per_query"], mask, num_gallery=len(d["gallery"][1]))})
        out["tables"]["groups"] = rows
    run.cache.clear()  # other sizes need new features; free the main size's first
    if opts.sizes:
        out["tables"]["size"] = []
        for s in opts.sizes:
            same = int(s) == size
            out["tables"]["size"].append({k: v for k, v in out["main"].items() if k != "_data"} if same
                                         else run.row(int(s), 0, main))
            run.cache.clear()
    return out


def evaluate(model: torch.nn.Module, data_dir: Path, image_size: int | None = None, parts: list[int] | None = None,
             reweight: bool | None = None, shift_px: int = 0, flip: bool = True, batch_size: int = 32,
             progress: bool = True, workers: int = 0) -> dict[str, Any]:
    """Both directions' R@1, R@5, R@10, R@top1%, AP (percent): {"drone->satellite": {...},
    "satellite->drone": {...}}."""
    opts = EvalOptions(image_size=image_size, reweight=reweight, flip=flip, batch_size=batch_size, workers=workers,
                       progress=progress)
    size = int(image_size or model.cfg.image_size)
    spec = PartSpec("custom" if parts else "All", list(parts) if parts else None, reweight)
    if spec.parts:
        parse_part_specs([",".join(map(str, spec.parts))], model.cfg)  # range check, clear message
    row = _Runner(model, Path(data_dir), opts).row(size, shift_px, spec)
    return {d: row[d] for d in DIRECTIONS}


# --------------------------------------------------------------------------- artifacts
def save_features(path: str | Path, main_row: dict[str, Any], data_dir: str | Path, meta: dict[str, Any]) -> Path:
    """npz (no pickle) with <view>_feats / _labels / _paths for the four test folders plus a
    JSON `meta` string; paths relative to `data_dir` (the test folder). np.load(..., allow_pickle=False) reads it."""
    arrays: dict[str, np.ndarray] = {}
    base = Path(data_dir)
    for direction, (qv, gv) in DIRECTIONS.items():
        d = main_row["_data"][direction]
        for view, (f, labels, paths) in ((qv, d["query"]), (gv, d["gallery"])):
            rel = [os.path.relpath(p, base) for p in paths]
            arrays[f"{view}_feats"] = np.ascontiguousarray(f, dtype=np.float32)
            arrays[f"{view}_labels"] = np.array(labels, dtype=str)
            arrays[f"{view}_paths"] = np.array(rel, dtype=str)
    directions = {k: {"query": q, "gallery": g} for k, (q, g) in DIRECTIONS.items()}
    arrays["meta"] = np.array(json.dumps({**meta, "directions": directions}, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file handle stops numpy from appending ".npz" to the name
        np.savez(fh, **arrays)
    return path


def strip_private(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj


def run_eval(checkpoint: str | Path, data_dir: str | Path, out_json: str | Path, opts: EvalOptions,
             device: str = "auto", save_features_to: str | Path | None = None,
             visualize_dir: str | Path | None = None, vis_queries: int = 4) -> Path:
    """The `skyloc eval` stage: load the checkpoint, run the tables, write the JSON report (and
    optionally the features npz and top-5 grids). Returns the JSON path."""
    from skyloc.training.checkpoint import load_model

    model, cfg, ckpt = load_model(checkpoint)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SkylocError("--device cuda requested but CUDA is not available; use --device cpu")
    model.to(device)
    res = run_tables(model, data_dir, opts, keep_features=bool(save_features_to or visualize_dir))
    size = int(opts.image_size or cfg.image_size)
    options = {**asdict(opts), "image_size": size, "device": device,
               "reweight": cfg.reweight if opts.reweight is None else opts.reweight}
    options.pop("progress")
    report = {
        "format": EVAL_FORMAT,
        "checkpoint": str(checkpoint),
        "model_id": ckpt.get("model_id"),
        "model_config": cfg.to_dict(),
        "data": str(data_dir),
        "options": options,
        "results": strip_private(res["main"]),
        "tables": strip_private(res["tables"]),
    }
    if save_features_to:
        test_dir = view_dir(data_dir, "query_drone").parent
        meta = {"model_id": ckpt.get("model_id"), "image_size": size, "flip": opts.flip, "parts": None,
                "reweight": options["reweight"], "paths_relative_to": str(test_dir)}
        report["features"] = str(save_features(save_features_to, res["main"], test_dir, meta))
    if visualize_dir:
        from skyloc.training.visualize import save_retrieval_grids

        report["visualizations"] = [str(p) for p in save_retrieval_grids(visualize_dir, res["main"]["_data"], vis_queries)]
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_json, report)
    return out_json
