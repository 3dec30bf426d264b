"""`skyloc bench accuracy`: the paper's Table 3 ablation, Table 7 and Table 6 on one dataset, one budget.

Every Table 3 row (training.config.ABLATION_ORDER) is trained with the same data, seed,
epochs, optimiser settings and input size, and evaluated after its last epoch (no model
selection on the test set). Reweighting is an inference-time switch, so "+reweights" (msba) is
the "+KL" model evaluated with the head weights on — the same trained weights, not a new run.
Table 7 (each part, global, all, all + reweight) comes from the final model. Finally the
deployable FP32 ONNX of that model is compared with its INT8 builds (calibrated on training
images) on the same test set: the "INT8 R@1 within 1 point" goal.

`--seeds N` trains every row N times (seeds seed..seed+N-1) and reports the mean with a 95 %
Student-t interval per row, and per step (consecutive rows) the paired difference over seeds
with a paired t-test, naming the significant steps (benchmarks.ablation). `--sizes A,B` is the
paper's Table 6: the final row trained *and* tested at each size (`skyloc eval --test-size` only
resizes one checkpoint's test images).

Without --data a procedural University-1652-layout dataset is generated (runtime.synth).
Needs torch (training).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from skyloc.benchmarks import goals as G
from skyloc.benchmarks.ablation import row_summary, step_tests
from skyloc.benchmarks.report import machine_info, write_csv, write_results
from skyloc.core.errors import SkylocError

KL_ROW, RW_ROW = "lpn+ms+global+ba+kl", "msba"
SWITCHES = ("multiscale", "global_branch", "block_attention", "kl_loss", "reweight")
METRICS = ("R@1", "R@5", "AP")
FLAT_KEYS = tuple(f"{d}_{m}" for d in ("d2s", "s2d") for m in METRICS)
STEP_KEYS = ("d2s_R@1", "d2s_AP", "s2d_R@1", "s2d_AP")


def _flat(res: dict[str, Any]) -> dict[str, float]:
    out = {}
    for direction, short in (("drone->satellite", "d2s"), ("satellite->drone", "s2d")):
        for m in METRICS:
            out[f"{short}_{m}"] = float(res[direction][m])
    return out


def _dataset(data: Path | None, work: Path, locations: int, size: int, seed: int, progress: bool) -> tuple[Path, str]:
    if data is not None:
        if not (Path(data) / "train").is_dir() or not (Path(data) / "test").is_dir():
            raise SkylocError(f"--data {data}: expected a University-1652 layout (train/ and test/ folders)")
        return Path(data), f"dataset {data}"
    from skyloc.synth.dataset import SynthDatasetConfig, make_dataset

    out = work / "data"
    if not (out / "synth.json").is_file():
        if progress:
            print(f"[bench accuracy] generating a procedural dataset ({locations} locations) in {out}", flush=True)
        make_dataset(None, out, SynthDatasetConfig(locations=locations, image_px=max(size, 64), seed=seed,
                                                   overwrite=True))
    return out, f"procedural dataset (runtime.synth, {locations} locations, seed {seed}) generated in the work dir"


def bench_accuracy(
    data: str | os.PathLike | None = None,
    presets: Sequence[str] | None = None,
    epochs: int = 10,
    size: int = 64,
    backbone: str = "resnet18",
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    locations: int = 40,
    drones_per_location: int = 4,
    pretrained: str = "",
    work_dir: str | os.PathLike | None = None,
    quant: bool = True,
    threads: int = 0,
    results_dir: str | os.PathLike | None = None,
    name: str = "accuracy",
    command: str | None = None,
    progress: bool = True,
    seeds: int = 1,
    sizes: Sequence[int] | None = None,
    ablation_data: bool | None = None,
    worlds: int = 2,
    drone_views: int = 8,
) -> dict[str, Path]:
    """Table 3 rows (each trained `seeds` times: seeds seed .. seed + seeds - 1), Table 7 of the
    final model, Table 6 (`sizes`: the final row trained and tested at each size) and the INT8
    check. With `ablation_data` (default: when seeds > 1 and no --data) the data is the
    multi-map nadir + spiral set of benchmarks.ablation, `locations` per map."""
    import torch

    from skyloc.training.checkpoint import load_model
    from skyloc.training.config import ABLATION_ORDER

    presets = list(presets or ABLATION_ORDER)
    bad = [p for p in presets if p not in ABLATION_ORDER]
    if bad:
        raise SkylocError(f"unknown ablation preset(s) {bad}; choose from {', '.join(ABLATION_ORDER)}")
    if seeds < 1 or any(int(s) < 16 for s in (sizes or [])):
        raise SkylocError(f"--seeds must be >= 1 (got {seeds}) and --sizes >= 16 px (got {sizes})")
    if threads:
        torch.set_num_threads(threads)
    machine = machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-accuracy-") if work_dir is None else None
    work = Path(work_dir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    use_ablation = (seeds > 1 and data is None) if ablation_data is None else bool(ablation_data)
    seed_list = [seed + i for i in range(seeds)]
    try:
        if use_ablation and data is None:
            from skyloc.benchmarks.ablation import ablation_dataset

            data_dir, data_note = ablation_dataset(work, worlds=worlds, locations_per_map=locations,
                                                   drones=drone_views, image_px=max(max([size, *(sizes or [])]), 64),
                                                   seed=seed, progress=progress)
        else:
            data_dir, data_note = _dataset(Path(data) if data else None, work, locations, size, seed, progress)
        budget = dict(backbone=backbone, epochs=epochs, batch_size=batch_size, lr=lr,
                      lr_step_epochs=[], workers=0, eval_every=0, drones_per_location=drones_per_location,
                      pretrained=pretrained or None)
        trainer = _Trainer(data_dir, work, budget, progress)
        # +reweights reuses the +KL weights: train +KL if msba is asked for.
        per_seed: dict[str, dict[int, dict[str, float]]] = {}
        for sd in seed_list:  # seed outer: +KL and +reweights of one seed share one feature extraction
            for p in presets:
                src = KL_ROW if p == RW_ROW else p
                per_seed.setdefault(p, {})[sd] = trainer.result(src, size, sd, reweight=True if p == RW_ROW else None)
        rows = []
        for p in presets:
            src = KL_ROW if p == RW_ROW else p
            cfg = trainer.config(src, size, seed_list[0])[0]
            row = {"row": p, "trained_as": src + (" + reweight at inference" if p == RW_ROW else ""),
                   **{sw: bool(getattr(cfg, sw)) for sw in SWITCHES}, **row_summary(per_seed[p], FLAT_KEYS)}
            if p == RW_ROW:
                row["reweight"] = True
            rows.append(row)
        steps = step_tests(presets, per_seed, STEP_KEYS) if seeds > 1 and len(presets) > 1 else []
        if steps and len(presets) > 2:  # and the whole chain: the first row against the last
            steps += step_tests([presets[0], presets[-1]], per_seed, STEP_KEYS)
        final = RW_ROW if RW_ROW in presets else presets[-1]
        final_src = KL_ROW if final == RW_ROW else final
        final_ckpt = trainer.checkpoint(final_src, size, seed_list[0])
        model, cfg, _ = load_model(final_ckpt)
        from skyloc.training.evaluate import EvalOptions, run_tables

        t7 = run_tables(model, data_dir, EvalOptions(image_size=size, part_rows=["table7"], progress=progress))
        table7 = [{"part": r["name"], "heads": "all" if r["parts"] is None else ",".join(map(str, r["parts"])),
                   "reweight": r["reweight"], **_flat(r)} for r in t7["tables"].get("parts", [])]
        table6 = []
        for s_px in sizes or []:
            res = {sd: trainer.result(final_src, int(s_px), sd, reweight=True if final == RW_ROW else None)
                   for sd in seed_list}
            table6.append({"size": int(s_px), "row": final, **row_summary(res, FLAT_KEYS)})
        if quant:
            from skyloc.benchmarks.prepare import checkpoint_with

            # The deployable model: +reweights is the +KL weights with reweight on in the graph.
            deploy = checkpoint_with(final_ckpt, work, "deploy", reweight=(final == RW_ROW) or cfg.reweight)
            qrows = _quant_rows(deploy, data_dir, work, progress)
        else:
            qrows = []
    finally:
        if tmp is not None:
            tmp.cleanup()
    goals = [G.int8_accuracy_goal(qrows)] if quant else []
    cols_t7 = ["part", "heads", "reweight", *[f"{d}_{m}" for d in ("d2s", "s2d") for m in METRICS]]
    ci_cols = [c for k in FLAT_KEYS for c in (k, f"{k}_ci95")]
    extra = [("Table 7: parts, global, all (final model: " + final + f", seed {seed_list[0]})", "table7", table7,
              cols_t7)]
    if steps:
        extra.append(("Steps: paired difference over seeds (later row minus earlier), 95 % interval, paired t-test",
                      "steps", steps, ["step", "metric", "seeds", "diff", "ci95", "p", "test", "significant"]))
    if table6:
        extra.append(("Table 6: trained and tested at each input size (" + final + ")", "table6", table6,
                      ["size", "row", "seeds", *ci_cols]))
    if qrows:
        extra.append(("FP32 vs INT8 ONNX (drone -> satellite, no flip)", "int8", qrows,
                      ["precision", "model", "queries", "status", "R@1", "R@5", "R@10", "AP"]))
    sig = [f"{t['step']} ({t['metric']}, p={t['p']:.3g})" for t in steps if t["significant"]]
    notes = [
        f"Data: {data_note}.",
        f"Budget, identical for every row: {backbone} at {size} px, {epochs} epochs, batch {batch_size}, lr {lr} "
        f"(backbone x0.1), no lr steps, seeds {seed_list}, {drones_per_location} drone rows per location per epoch"
        + (f", ImageNet init from {pretrained}" if pretrained else ", random init (no pretrained weights)") + ".",
        "Each row is evaluated after its last epoch (University-1652 protocol with flip), never selected on "
        "the test set. d2s = drone -> satellite, s2d = satellite -> drone; values in percent"
        + ("; each value is the mean over the seeds, *_ci95 the half-width of its 95 % Student-t interval."
           if seeds > 1 else "."),
        f"'{RW_ROW}' (+reweights) is the '{KL_ROW}' model evaluated with the inference head weights on "
        "(global 1.5, parts 1.0): reweighting changes no trained weight.",
    ]
    if steps:
        notes.append(f"Significant steps (paired t-test over {seeds} seeds, p < 0.05; the exact sign test where "
                     "every seed moved by the same amount, which a t-test cannot judge): " + (", ".join(sig) or "none")
                     + f". A step not listed is within the noise of this budget. Every seed's value: {name}-seeds.csv.")
    else:
        notes.append("One seed: differences between rows carry no error bar; use --seeds N (N >= 3) to test them.")
    if qrows:
        notes.append("INT8 check: the final model exported to ONNX (FP32, full, with its inference reweighting) and "
                     "calibrated on 64 training images (stratified over satellite and drone views), evaluated "
                     "with ONNX Runtime on the test split without flip.")
    columns = ["row", "trained_as", *SWITCHES, "seeds", *ci_cols]
    paths = write_results(name, rows, results_dir, title="Accuracy: Table 3 ablation and Table 7 parts",
                          columns=columns, goals=goals, notes=notes, extra_tables=extra,
                          plot=lambda fig: _plot(fig, rows, table7), command=command, machine=machine)
    if seeds > 1:
        seed_rows = [{"row": p, "seed": sd, **per_seed[p][sd]} for p in presets for sd in sorted(per_seed[p])]
        paths["seeds_csv"] = write_csv(Path(paths["csv"]).parent / f"{name}-seeds.csv", seed_rows,
                                       ["row", "seed", *FLAT_KEYS])
    return paths


class _Trainer:
    """Trains (or reuses) one run per (preset, size, seed) under work/runs and caches its test metrics."""

    def __init__(self, data_dir: Path, work: Path, budget: dict[str, Any], progress: bool):
        self.data_dir, self.work, self.budget, self.progress = data_dir, work, budget, progress
        self.cache: dict[tuple[str, int, int, Any], dict[str, float]] = {}
        self.runners: dict[tuple[str, int, int], Any] = {}

    def config(self, preset_name: str, size: int, seed: int):
        from skyloc.training.config import preset

        return preset(preset_name, image_size=size, seed=seed, **self.budget)

    def checkpoint(self, preset_name: str, size: int, seed: int) -> Path:
        from skyloc.training.train import train

        mcfg, tcfg = self.config(preset_name, size, seed)
        run = self.work / "runs" / f"{preset_name}-{size}px-seed{seed}"
        if not (run / "last.pt").is_file() or _epochs_done(run / "last.pt") < tcfg.epochs:
            if self.progress:
                print(f"[bench accuracy] training {preset_name} at {size} px, seed {seed} ({tcfg.epochs} epochs)",
                      flush=True)
            train(self.data_dir, run, mcfg, tcfg, resume=(run / "last.pt").is_file(), progress=self.progress)
        return run / "last.pt"

    def result(self, preset_name: str, size: int, seed: int, reweight: bool | None) -> dict[str, float]:
        """Test metrics of one run; both reweight settings come from one feature extraction."""
        key = (preset_name, size, seed, reweight)
        if key not in self.cache:
            from skyloc.training.checkpoint import load_model
            from skyloc.training.evaluate import EvalOptions, PartSpec, _Runner

            runner_key = (preset_name, size, seed)
            if runner_key not in self.runners:
                self.runners.clear()  # one model's features at a time
                model, _, _ = load_model(self.checkpoint(preset_name, size, seed))
                self.runners[runner_key] = _Runner(model, self.data_dir, EvalOptions(image_size=size,
                                                                                      progress=self.progress))
            row = self.runners[runner_key].row(size, 0, PartSpec("All", None, reweight))
            self.cache[key] = _flat(row)
        return self.cache[key]


def _epochs_done(path: Path) -> int:
    from skyloc.training.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(path).get("epoch", 0))
    except SkylocError:
        return 0


def _quant_rows(checkpoint: Path, data_dir: Path, work: Path, progress: bool) -> list[dict[str, Any]]:
    """R@K of the FP32 ONNX and its two INT8 builds on the test split (drone -> satellite)."""
    from skyloc.calibration.quantize import quantize_pair
    from skyloc.calibration.report import retrieval_metrics
    from skyloc.calibration.select import load_batch, select_images
    from skyloc.export.onnx_export import export_onnx
    from skyloc.core.sidecar import read_model_sidecar

    qdir = work / "quant"
    qdir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(checkpoint, qdir / "model.onnx", variant="full")
    contract = read_model_sidecar(fp32).input
    chosen = select_images([data_dir / "train" / "satellite", data_dir / "train" / "drone"], 64)
    images = load_batch([c.path for c in chosen], contract)
    paths = quantize_pair(fp32, images, qdir, progress=progress)
    models = {"fp32": fp32, "int8-ort": paths["int8-ort"], "int8-trt": paths["int8-trt"]}
    metrics = retrieval_metrics(models, data_dir, progress=progress)
    n = metrics["_counts"]["queries"]
    return [{"precision": k, "model": Path(p).name, "status": "ok", "queries": n,
             **{m: metrics[k].get(m) for m in ("R@1", "R@5", "R@10", "AP")}} for k, p in models.items()]


def _plot(fig: Any, rows: Sequence[dict[str, Any]], table7: Sequence[dict[str, Any]]) -> None:
    import numpy as np

    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(rows))
    w = 0.2
    for i, (key, label) in enumerate((("d2s_R@1", "D->S R@1"), ("d2s_AP", "D->S AP"),
                                      ("s2d_R@1", "S->D R@1"), ("s2d_AP", "S->D AP"))):
        ax1.bar(x + (i - 1.5) * w, [r[key] for r in rows], w, label=label)
    ax1.set_xticks(x, [r["row"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax1.set_ylabel("%")
    ax1.set_title("Table 3 ablation")
    ax1.legend(fontsize=7)
    x = np.arange(len(table7))
    ax2.bar(x - 0.2, [r["d2s_R@1"] for r in table7], 0.4, label="D->S R@1")
    ax2.bar(x + 0.2, [r["s2d_R@1"] for r in table7], 0.4, label="S->D R@1")
    ax2.set_xticks(x, [r["part"] for r in table7], rotation=30, ha="right", fontsize=7)
    ax2.set_title("Table 7 parts")
    ax2.legend(fontsize=7)
