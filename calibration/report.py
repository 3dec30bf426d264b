"""Accuracy of exported artifacts against the FP32 ONNX: embedding cosine on images, and
drone -> satellite retrieval (R@K, AP) on a University-1652-layout held-out set.

Also the small ONNX Runtime helpers (`make_session`, `embed`) that benchmarks reuse.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from skyloc.calibration.select import IMAGE_EXTS, load_batch
from skyloc.core.errors import SkylocError
from skyloc.core.metrics import cosine_rows
from skyloc.core.atomic import write_json_atomic
from skyloc.core.sidecar import read_model_sidecar

REPORT_JSON = "accuracy-report.json"
REPORT_MD = "accuracy-report.md"
QUERY_VIEW, GALLERY_VIEW = "query_drone", "gallery_satellite"
RETRIEVAL_KEYS = ("R@1", "R@5", "R@10", "R@top1%", "AP")


def make_session(path: str | os.PathLike, threads: int | None = None):
    """CPU ONNX Runtime session with full graph optimisation (QDQ fusions included)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed(session, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Run a uint8 NHWC array through an ONNX session in batches -> float32 (N, D)."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def cosine_stats(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    c = cosine_rows(ref, test)
    return {"mean": float(c.mean()), "min": float(c.min()), "p05": float(np.percentile(c, 5)), "n": int(len(c))}


def _view_samples(root: Path, view: str) -> tuple[list[Path], list[str]]:
    base = root / "test" / view
    if not base.is_dir():
        raise SkylocError(f"--eval-data {root}: {base} not found; expected the University-1652 layout "
                          f"test/{QUERY_VIEW}/<location>/*.jpg and test/{GALLERY_VIEW}/<location>/*.jpg")
    paths, labels = [], []
    for loc in sorted(d.name for d in base.iterdir() if d.is_dir()):
        for p in sorted((base / loc).iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(p)
                labels.append(loc)
    if not paths:
        raise SkylocError(f"no images under {base}/<location>/")
    return paths, labels


def embed_paths(models: dict[str, Path], paths: Sequence[Path], chunk: int = 64,
                progress: bool = True, desc: str = "embedding") -> dict[str, np.ndarray]:
    """Embed image files with several models in one pass over the disk (each chunk is decoded
    once and fed to every model), so held-out sets of any size fit in memory."""
    contract = read_model_sidecar(next(iter(models.values()))).input
    sessions = {k: make_session(p) for k, p in models.items()}
    feats: dict[str, list[np.ndarray]] = {k: [] for k in models}
    for i in tqdm(range(0, len(paths), chunk), desc=desc, unit="chunk", disable=not progress):
        batch = load_batch(paths[i:i + chunk], contract)
        for k, s in sessions.items():
            feats[k].append(embed(s, batch))
    return {k: np.concatenate(v) for k, v in feats.items()}


def retrieval_metrics(models: dict[str, Path], eval_data: str | os.PathLike, progress: bool = True) -> dict[str, dict]:
    """Drone -> satellite R@1/R@5/R@10/R@top1%/AP (%) of every model on `eval_data`'s test split."""
    from skyloc.core.metrics import evaluate_retrieval  # owned by the data/eval helper

    root = Path(eval_data)
    q_paths, q_labels = _view_samples(root, QUERY_VIEW)
    g_paths, g_labels = _view_samples(root, GALLERY_VIEW)
    classes = {c: i for i, c in enumerate(sorted(set(q_labels) | set(g_labels)))}
    ql = np.array([classes[c] for c in q_labels], dtype=np.int64)
    gl = np.array([classes[c] for c in g_labels], dtype=np.int64)
    qf = embed_paths(models, q_paths, progress=progress, desc=QUERY_VIEW)
    gf = embed_paths(models, g_paths, progress=progress, desc=GALLERY_VIEW)
    out = {}
    for k in models:
        m = evaluate_retrieval(qf[k], ql, gf[k], gl)
        out[k] = {name: float(v) for name, v in m.items() if name in RETRIEVAL_KEYS and v is not None}
    out["_counts"] = {"queries": len(q_paths), "gallery": len(g_paths)}
    return out


def accuracy_report(reference: str | os.PathLike, artifacts: Sequence[str | os.PathLike], images: np.ndarray,
                    out_dir: str | os.PathLike, eval_data: str | os.PathLike | None = None,
                    images_note: str = "calibration images", progress: bool = True) -> tuple[Path, Path]:
    """Compare each artifact with the FP32 `reference` ONNX; writes OUT/accuracy-report.{json,md}."""
    reference = Path(reference)
    ref_side = read_model_sidecar(reference)
    models = {"fp32": reference}
    for a in artifacts:
        side = read_model_sidecar(a)
        if side.model_id != ref_side.model_id or side.variant != ref_side.variant:
            raise SkylocError(f"{a} (model {side.model_id}, {side.variant}) is not a build of {reference} "
                              f"(model {ref_side.model_id}, {ref_side.variant})")
        models[side.precision] = Path(a)
    sessions = {k: make_session(p) for k, p in models.items()}
    feats = {k: embed(s, images) for k, s in sessions.items()}
    report: dict = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": reference.name, "model_id": ref_side.model_id, "variant": ref_side.variant,
        "artifacts": {k: Path(p).name for k, p in models.items()},
        "cosine_vs_fp32": {"images": images_note, "n": int(len(images)),
                           **{k: cosine_stats(feats["fp32"], f) for k, f in feats.items() if k != "fp32"}},
    }
    if eval_data is not None:
        metrics = retrieval_metrics(models, eval_data, progress=progress)
        counts = metrics.pop("_counts")
        report["retrieval"] = {"data": str(eval_data), "direction": "drone->satellite", **counts,
                               "metrics": metrics,
                               "delta_vs_fp32": {k: {m: v - metrics["fp32"][m] for m, v in vals.items() if m in metrics["fp32"]}
                                                 for k, vals in metrics.items() if k != "fp32"}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = write_json_atomic(out_dir / REPORT_JSON, report)
    mpath = out_dir / REPORT_MD
    mpath.write_text(_markdown(report))
    return jpath, mpath


def _markdown(r: dict) -> str:
    lines = [f"# Accuracy report — {r['reference']} ({r['variant']}, model {r['model_id']})", "",
             f"Created {r['created']}.", "",
             f"## Embedding cosine vs FP32 ({r['cosine_vs_fp32']['images']}, n = {r['cosine_vs_fp32']['n']})", "",
             "| artifact | file | mean | p05 | min |", "|---|---|---|---|---|"]
    for k, v in r["cosine_vs_fp32"].items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {r['artifacts'][k]} | {v['mean']:.5f} | {v['p05']:.5f} | {v['min']:.5f} |")
    if "retrieval" in r:
        ret = r["retrieval"]
        names = list(next(iter(ret["metrics"].values())))
        lines += ["", f"## Retrieval {ret['direction']} on {ret['data']} "
                      f"({ret['queries']} queries, {ret['gallery']} gallery)", "",
                  "| artifact | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k, vals in ret["metrics"].items():
            cells = [f"{vals[n]:.2f}" + (f" ({ret['delta_vs_fp32'][k][n]:+.2f})" if k != "fp32" else "")
                     if n in vals else "-" for n in names]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
