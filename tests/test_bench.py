"""Smoke tests of the benchmarks at toy sizes: the files they write, their structure, and values
that must agree with each other (ratios vs the timings in the same CSV, exact-search agreement).
Timings themselves are never asserted."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from skyloc.benchmarks.report import Goal, percentiles_ms, write_results
from skyloc.core.sidecar import InputContract, ModelSidecar, sha256_file, write_model_sidecar

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV the benchmark wrote, read with the standard library alone."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _f(x: str) -> float:
    return float(x) if x not in ("", None) else float("nan")


def toy_model(path: Path, dim: int, variant: str = "full", precision: str = "fp32", size: int = 8,
              role: str | None = None, seed: int = 0) -> Path:
    """uint8 NHWC image -> Cast -> Flatten -> MatMul -> embedding: a real ONNX graph ORT runs,
    with a sidecar, built without torch."""
    w = np.random.default_rng(seed).standard_normal((size * size * 3, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Flatten", ["f"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["embedding"])],
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    write_model_sidecar(path, ModelSidecar(
        variant=variant, embedding_dim=dim, precision=precision, opset=17, model_id="toy",
        onnx_sha256=sha256_file(path), input=InputContract(height=size, width=size),
        extra={"benchmark_role": role} if role else {}))
    return path


# --------------------------------------------------------------------------- report
def test_percentiles_and_results_files(tmp_path: Path) -> None:
    ns = np.arange(1, 101) * 1_000_000  # 1..100 ms
    st = percentiles_ms(ns)
    assert st["p50_ms"] == pytest.approx(50.5) and st["mean_ms"] == pytest.approx(50.5)
    assert st["p99_ms"] == pytest.approx(99.01)
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x|y"}]
    paths = write_results("demo", rows, tmp_path, title="Demo", goals=[Goal("g", "t", "m", False, "because")],
                          notes=["n1"], plot=lambda fig: fig.subplots().plot([1, 2], [3, 4]), command="skyloc bench x",
                          extra_tables=[("More", "more", [{"k": 1}], ["k"])])
    got = read_csv(paths["csv"])
    assert [r["a"] for r in got] == ["1", "2"] and list(got[0]) == ["a", "b", "c"] and got[0]["c"] == ""
    md = paths["md"].read_text()
    assert md.startswith("# Demo") and "skyloc bench x" in md and "## Machine" in md and "CPU:" in md
    assert "**missed**" in md and "because" in md and "x/y" in md and "## More" in md
    assert read_csv(paths["more_csv"]) == [{"k": "1"}]
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- search
def test_exact_top1_matches_naive_loop() -> None:
    from skyloc.benchmarks.search import SyntheticSpec, exact_top1, make_queries, synthetic_database

    db = synthetic_database(300, 12, SyntheticSpec(cluster_size=5))
    assert np.allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    q, src = make_queries(db, 40, 0.2, seed=3)
    naive = [max(range(len(db)), key=lambda j: float(np.dot(qi.astype(np.float64), db[j]))) for qi in q]
    assert exact_top1(db, q, chunk=37).tolist() == naive


def test_bench_search_toy(tmp_path: Path) -> None:
    from skyloc.benchmarks.search import bench_search

    paths = bench_search(dims=[16], tiles=["500", 2000, 1e5], queries=120, timed_queries=15, k=3, max_gb=0.005,
                         results_dir=tmp_path, command="skyloc bench search --toy", progress=False)
    rows = read_csv(paths["csv"])
    by = {(int(r["tiles"]), r["kind"]): r for r in rows}
    assert set(by) == {(n, k) for n in (500, 2000, 100_000) for k in ("exact", "flat", "hnsw", "ivfpq")}
    for n in (500, 2000):
        ex = by[(n, "exact")]
        assert _f(ex["top1_agreement"]) == 1.0 and _f(by[(n, "flat")]["top1_agreement"]) == 1.0
        for kind in ("exact", "flat", "hnsw", "ivfpq"):
            r = by[(n, kind)]
            assert r["status"] == "ok" and 0.0 <= _f(r["top1_agreement"]) <= 1.0
            assert _f(r["p50_ms"]) <= _f(r["p90_ms"]) <= _f(r["p99_ms"])
            assert _f(r["speedup_vs_exact"]) == pytest.approx(_f(ex["p50_ms"]) / _f(r["p50_ms"]), rel=1e-6)
            assert _f(r["memory_mb"]) == pytest.approx(n * 16 * 4 / 2**20 + _f(r["index_mb"]), rel=1e-6)
        # a flat index stores the n x d float32 vectors plus a small header
        assert n * 16 * 4 <= _f(by[(n, "flat")]["index_mb"]) * 2**20 < n * 16 * 4 + 4096
    for kind in ("exact", "flat", "hnsw", "ivfpq"):
        assert by[(100_000, kind)]["status"].startswith("skipped: needs ")
    md = paths["md"].read_text()
    assert "skyloc bench search --toy" in md and "**not measured**" in md  # no 1M x 512 row
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_search_goal_verdicts() -> None:
    from skyloc.benchmarks.search import search_goal

    base = {"tiles": 1_000_000, "dim": 512, "status": "ok"}
    assert search_goal([{**base, "kind": "hnsw", "p50_ms": 1.0, "top1_agreement": 0.995}]).met is True
    miss = search_goal([{**base, "kind": "exact", "p50_ms": 80.0, "top1_agreement": 1.0},
                        {**base, "kind": "ivfpq", "p50_ms": 1.0, "top1_agreement": 0.9}])
    assert miss.met is False and miss.why


# --------------------------------------------------------------------------- latency
def test_bench_latency_models(tmp_path: Path) -> None:
    from skyloc.benchmarks.latency import bench_latency

    models = [toy_model(tmp_path / "full.onnx", 64), toy_model(tmp_path / "full-q.onnx", 64, precision="int8-ort", seed=1),
              toy_model(tmp_path / "global.onnx", 16, variant="global", seed=2),
              toy_model(tmp_path / "bb.onnx", 16, variant="global", role="bare-backbone", seed=3)]
    paths = bench_latency(models=models, batches=[1, 3], runs=6, warmup=1, e2e_tiles=300,
                          results_dir=tmp_path / "res", command="skyloc bench latency --toy", progress=False)
    rows = read_csv(paths["csv"])
    assert len(rows) == 8 and all(r["status"] == "ok" and r["backend"] == "ort-cpu" for r in rows)
    assert {r["variant"] for r in rows} == {"full", "global", "backbone"}
    for r in rows:
        b = int(r["batch"])
        base = next(o for o in rows if o["batch"] == r["batch"] and o["model"] == "full.onnx")
        assert _f(r["speedup_vs_baseline"]) == pytest.approx(_f(base["p50_ms"]) / _f(r["p50_ms"]), rel=1e-6)
        assert _f(r["throughput_ips"]) == pytest.approx(b * 1000 / _f(r["mean_ms"]), rel=1e-6)
        if r["variant"] == "full":
            bb = next(o for o in rows if o["batch"] == r["batch"] and o["variant"] == "backbone")
            if r["precision"] == "fp32":
                assert _f(r["heads_overhead"]) == pytest.approx(_f(r["p50_ms"]) / _f(bb["p50_ms"]) - 1, rel=1e-6)
            else:
                assert r["heads_overhead"] == ""  # no int8 backbone to compare with
        has_e2e = b == 1 and r["variant"] != "backbone"
        assert (r["e2e_p50_ms"] != "") == has_e2e
        if has_e2e:
            assert int(r["e2e_tiles"]) == 300
    md = paths["md"].read_text()
    for goal in ("INT8 speed", "heads overhead", "global e2e", "INT8 accuracy"):
        assert f"| {goal} |" in md
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_benchmarks_run_without_torch(tmp_path: Path) -> None:
    model = toy_model(tmp_path / "full.onnx", 8)
    code = (
        "import sys\n"
        "from skyloc.cli import main\n"
        f"rc = main(['bench', 'search', '--dims', '8', '--tiles', '300', '--kinds', 'exact,flat', '--queries', '20',"
        f" '--timed-queries', '5', '--results-dir', {str(tmp_path)!r}, '--quiet'])\n"
        f"rc2 = main(['bench', 'latency', '--models', {str(model)!r}, '--batches', '1', '--runs', '2', '--warmup', '1',"
        f" '--e2e-tiles', '50', '--results-dir', {str(tmp_path)!r}, '--quiet'])\n"
        "import benchmarks.runtime_bench, benchmarks.indexes, benchmarks.goals\n"
        "print('RC', rc, rc2, 'TORCH', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert "RC 0 0 TORCH False" in out.stdout, out.stderr[-2000:]
    assert (tmp_path / "search.csv").is_file() and (tmp_path / "latency.md").is_file()


# --------------------------------------------------------------------------- runtime
def _toy_tileset(path: Path, n: int, dim: int) -> Path:
    from skyloc.runtime.maps.tileset import TileSet, save_tileset
    from skyloc.runtime.maps.tileset_build import footprints_for

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    centers = np.stack([60.45 + rng.uniform(0, 0.01, n), 22.27 + rng.uniform(0, 0.02, n)], 1)
    ts = TileSet(emb, centers, footprints_for(centers, np.full(n, 150.0)), np.ones(n, np.float32),
                 {"model_id": "toy", "variant": "full", "tile_m": 150.0, "stride_m": 30.0})
    return save_tileset(ts, path)


def test_pad_tileset_keeps_real_tiles(tmp_path: Path) -> None:
    from skyloc.benchmarks.runtime_bench import pad_tileset
    from skyloc.runtime.maps.tileset import TileSet

    ts = TileSet.load(_toy_tileset(tmp_path / "t.npz", 40, 8))
    padded, extra = pad_tileset(ts, 100)
    assert extra == 60 and len(padded) == 100 and padded.embeddings.shape == (100, 8)
    assert np.array_equal(padded.embeddings[:40], ts.embeddings)
    assert np.allclose(np.linalg.norm(padded.embeddings, axis=1), 1.0, atol=1e-5)
    lo, hi = ts.centers.min(0), ts.centers.max(0)
    assert ((padded.centers[40:] >= lo) & (padded.centers[40:] <= hi)).all()
    assert padded.model_id == "toy" and pad_tileset(ts, 10)[1] == 0


def test_bench_runtime_toy(tmp_path: Path) -> None:
    from skyloc.benchmarks.runtime_bench import bench_runtime

    model = toy_model(tmp_path / "m.onnx", 32)
    tiles = _toy_tileset(tmp_path / "tiles.npz", 50, 32)
    video = tmp_path / "v.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(12):
        w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    w.release()
    paths = bench_runtime(model=model, tiles=tiles, video=str(video), frames=40, pad_tiles=400, infer_runs=10,
                          work_dir=tmp_path / "work", results_dir=tmp_path / "res", command="skyloc bench runtime --toy",
                          progress=False, blank_cos=1.0)
    rows = {r["stage"]: r for r in read_csv(paths["csv"])}
    for stage in ("preprocess", "infer", "retrieve", "filter", "total", "frame -> fix"):
        assert int(rows[stage]["frames"]) == 40, stage
    # every frame's frame->fix contains its inference and is contained in its total, so the order
    # statistics keep that order
    for p in ("p50_ms", "p90_ms", "p99_ms"):
        assert _f(rows["infer"][p]) <= _f(rows["frame -> fix"][p]) <= _f(rows["total"][p]) + 1e-9
    f2f = rows["frame -> fix"]
    assert _f(f2f["p99_over_p50"]) == pytest.approx(_f(f2f["p99_ms"]) / _f(f2f["p50_ms"]), rel=1e-6)
    mem = rows["resident memory (MB)"]
    assert _f(mem["rss_max_mb"]) >= _f(mem["rss_end_mb"]) > 0
    rss = read_csv(paths["rss_csv"])
    assert len(rss) >= 4 and all(float(r["rss_mb"]) > 0 for r in rss)
    md = paths["md"].read_text()
    assert "400 = 50 real tiles + 350 random unit-vector distractors" in md
    assert "| memory soak |" in md and "run shortened to 40 frames" in md
    assert "| loop overhead |" in md and "only 400 tiles" in md


# --------------------------------------------------------------------------- torch-side pieces
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    torch.manual_seed(0)
    m, t = preset("tiny", num_classes=5)
    model = build_model(m)
    with torch.no_grad():  # non-trivial BN statistics, so the fold into the convs is exercised
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, m, t)


def test_export_backbone_matches_torch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from skyloc.benchmarks.backbone_export import export_backbone
    from skyloc.core.sidecar import IMAGENET_MEAN, IMAGENET_STD, read_model_sidecar
    from skyloc.training.checkpoint import load_model

    out = export_backbone(tiny_checkpoint, tmp_path / "bb.onnx", size=32)
    side = read_model_sidecar(out)
    assert side.extra["benchmark_role"] == "bare-backbone" and side.input.height == 32 and side.embedding_dim == 512
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    model, _, _ = load_model(tiny_checkpoint)
    norm = (x.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    with torch.no_grad():
        f4 = model.backbone(torch.from_numpy(norm).permute(0, 3, 1, 2).contiguous())[1]
    ref = f4.mean(dim=(2, 3)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(got, ref, atol=1e-4)


def test_bench_accuracy_tiny(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from skyloc.benchmarks.accuracy import bench_accuracy

    paths = bench_accuracy(presets=["lpn+ms+global+ba+kl", "msba"], epochs=1, size=32, batch_size=8, locations=6,
                           drones_per_location=2, work_dir=tmp_path / "work", results_dir=tmp_path / "res",
                           command="skyloc bench accuracy --toy", progress=False)
    rows = {r["row"]: r for r in read_csv(paths["csv"])}
    assert set(rows) == {"lpn+ms+global+ba+kl", "msba"}
    assert rows["msba"]["reweight"] == "True" and rows["lpn+ms+global+ba+kl"]["reweight"] == "False"
    assert rows["msba"]["trained_as"].startswith("lpn+ms+global+ba+kl")
    for r in rows.values():
        for k in ("d2s_R@1", "d2s_R@5", "d2s_AP", "s2d_R@1", "s2d_AP"):
            assert 0.0 <= _f(r[k]) <= 100.0
        assert _f(r["d2s_R@1"]) <= _f(r["d2s_R@5"])
    t7 = {r["part"]: r for r in read_csv(paths["table7_csv"])}
    assert list(t7) == ["P1", "P2", "P3", "P4", "P5", "P6", "Global", "All", "All+RW"]
    # Table 7's All / All+RW are the same model and settings as the two ablation rows
    for k in ("d2s_R@1", "d2s_AP", "s2d_AP"):
        assert _f(t7["All"][k]) == pytest.approx(_f(rows["lpn+ms+global+ba+kl"][k]), abs=1e-6)
        assert _f(t7["All+RW"][k]) == pytest.approx(_f(rows["msba"][k]), abs=1e-6)
    q = {r["precision"]: r for r in read_csv(paths["int8_csv"])}
    assert set(q) == {"fp32", "int8-ort", "int8-trt"} and all(0 <= _f(r["R@1"]) <= 100 for r in q.values())
    md = paths["md"].read_text()
    assert "| INT8 accuracy |" in md and "Table 7" in md
