"""University-1652 folder-layout datasets (DESIGN.md section 3) and their transforms.

Layout: `train/{drone,satellite,street,google}/<location_id>/*.jpg|jpeg|png` and
`test/{query_drone,gallery_satellite,query_satellite,gallery_drone}/<location_id>/...`.
Drone images are numbered along the descending spiral (first = farthest, highest), so the
sorted file order of a location is its spiral order. Sorting is "natural" (digit runs compare
as numbers), identical to plain sorting for University-1652's zero-padded names and still right
for unpadded ones (image-2 before image-10).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from skyloc.core.errors import SkylocError
from skyloc.core.preprocess import prepare_image, read_image
from skyloc.core.sidecar import InputContract
from skyloc.runtime.sources.base import IMAGE_EXTS  # the one list of image file types (re-exported)
from skyloc.training.config import TrainConfig

TRAIN_VIEWS = ("drone", "satellite", "street", "google")
GROUPS = ("long", "middle", "short")  # thirds of a location's spiral, farthest first
_LAYOUT = ("expected the University-1652 layout: DATA/train/{drone,satellite,street,google}/<location_id>/"
           "*.jpg|jpeg|png and DATA/test/{query_drone,gallery_satellite,query_satellite,gallery_drone}/"
           "<location_id>/...")


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers ("image-2" < "image-10")."""
    return tuple((0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


# One decoder for every stage (runtime.preprocess): OpenCV, EXIF orientation applied, RGB.
read_rgb = read_image


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """A SkylocError raised in a DataLoader worker comes back with the worker's traceback in its
    message; keep only the original message so the CLI prints one clean line."""
    if isinstance(exc, SkylocError) and "Original Traceback" in str(exc):
        last = [ln for ln in str(exc).strip().splitlines() if ln.strip()][-1]
        return SkylocError(last.split("SkylocError: ", 1)[-1])
    return exc


# --------------------------------------------------------------------------- transforms
# Every transform starts from the decoded full image (uint8 HxWx3 RGB from `read_image`) and
# first applies the model's input contract (runtime.preprocess.prepare_image: centre square,
# INTER_AREA to size x size), so the deterministic eval path gives exactly the bytes the
# exported model gets at run time; the torch part only converts and normalises (as the ONNX graph).
def input_contract(size: int) -> InputContract:
    """The input contract of a model trained at `size` px: the one `skyloc export` records."""
    return InputContract(height=int(size), width=int(size))


class ToModelInput:
    """Full RGB image -> the contract's uint8 size x size RGB (runtime.preprocess.prepare_image)."""

    def __init__(self, size: int):
        self.contract = input_contract(size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return prepare_image(image, self.contract, bgr=False)

    def __repr__(self) -> str:
        return f"ToModelInput({self.contract.height}, {self.contract.resize})"


class ShiftRight:
    """Move the picture (uint8 HxWx3 array) right by `px` pixels, keeping its size: the left edge
    column is repeated into the gap and the rightmost `px` columns fall off (paper Table 4)."""

    def __init__(self, px: int):
        self.px = int(px)

    def __call__(self, im: np.ndarray) -> np.ndarray:
        if self.px <= 0:
            return im
        w = im.shape[1]
        if self.px >= w:
            raise SkylocError(f"shift of {self.px} px is not smaller than the image width {w}")
        return np.concatenate([np.repeat(im[:, :1], self.px, axis=1), im[:, : w - self.px]], axis=1)

    def __repr__(self) -> str:
        return f"ShiftRight({self.px})"


def _normalize() -> list:
    c = input_contract(1)
    return [T.ToTensor(), T.Normalize(c.mean, c.std)]


def train_transform(size: int, pad: int = 10, satellite: bool = False, rotation: float = 90.0) -> T.Compose:
    """LPN training augmentation after the input contract: pad (edge), [satellite: random
    rotation], random crop back to size, horizontal flip, ImageNet normalisation. Randomness
    comes from torch's RNG."""
    ops: list = [ToModelInput(size), T.ToPILImage()]
    if pad > 0:
        ops.append(T.Pad(pad, padding_mode="edge"))
    if satellite and rotation > 0:
        ops.append(T.RandomAffine(rotation))
    ops += [T.RandomCrop((size, size)), T.RandomHorizontalFlip()]
    return T.Compose(ops + _normalize())


def eval_transform(size: int, shift_px: int = 0) -> T.Compose:
    """Test transform: the input contract (centre square, INTER_AREA to size x size), optional
    right shift (in pixels of the resized image), ImageNet normalisation."""
    ops: list = [ToModelInput(size)]
    if shift_px:
        ops.append(ShiftRight(shift_px))
    return T.Compose(ops + _normalize())


# --------------------------------------------------------------------------- datasets
def view_dir(data_dir: str | Path, view: str) -> Path:
    """data_dir/<split>/<view>; also accepts data_dir already being the split folder."""
    data_dir = Path(data_dir)
    split = "train" if view in TRAIN_VIEWS else "test"
    for cand in (data_dir / split / view, data_dir / view):
        if cand.is_dir():
            return cand
    raise SkylocError(f"{data_dir / split / view} not found: {_LAYOUT}")


def _list_images(root: Path) -> list[tuple[Path, str]]:
    if not root.is_dir():
        raise SkylocError(f"{root} not found: {_LAYOUT}")
    samples: list[tuple[Path, str]] = []
    for loc in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: natural_key(d.name)):
        files = [f for f in loc.iterdir() if f.is_file() and not f.name.startswith(".")
                 and f.suffix.lower() in IMAGE_EXTS]
        samples += [(f, loc.name) for f in sorted(files, key=lambda f: natural_key(f.name))]
    if not samples:
        raise SkylocError(f"no images (*.jpg, *.jpeg, *.png) under {root}/<location_id>/: {_LAYOUT}")
    return samples


class U1652Folder(Dataset):
    """One view folder: root/view/<location_id>/*.{jpg,jpeg,png}.

    samples: (path, location_id) sorted by location then file (natural order); classes: sorted
    location ids; item i -> (CHW float tensor, index of its location in classes). Without a
    transform the tensor is the RGB image scaled to [0, 1]."""

    def __init__(self, root: str | Path, view: str, transform: Callable | None = None,
                 locations: Sequence[str] | None = None):
        self.root = Path(root)
        self.view = view
        self.dir = self.root / view
        self.samples = _list_images(self.dir)
        if locations is not None:  # a subset of the locations (e.g. held out for validation)
            keep = set(locations)
            missing = sorted(keep - {loc for _, loc in self.samples})
            if missing:
                raise SkylocError(f"locations {missing[:5]} have no images in {self.dir}")
            self.samples = [s for s in self.samples if s[1] in keep]
        self.classes = sorted({loc for _, loc in self.samples}, key=natural_key)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        return read_image(self.samples[i][0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, loc = self.samples[i]
        im = read_image(path)
        x = self.transform(im) if self.transform is not None else T.functional.to_tensor(im)
        return x, self.class_to_idx[loc]

    @property
    def labels(self) -> list[str]:
        return [loc for _, loc in self.samples]

    def relpaths(self, base: str | Path | None = None) -> list[str]:
        base = Path(base) if base is not None else self.root
        return [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p, _ in self.samples]


def _without(folder: U1652Folder, exclude: Sequence[str]) -> U1652Folder:
    """The folder minus the `exclude` locations (held out for validation: never trained on)."""
    if not exclude:
        return folder
    drop = set(exclude)
    return U1652Folder(folder.root, folder.view, folder.transform, [c for c in folder.classes if c not in drop])


class PairedTrainSet(Dataset):
    """Rows of (satellite tensor, drone tensor, label) showing the same training location.

    Row i is location i % num_locations; its drone image (and satellite image, when a location
    has several) is drawn with torch's RNG, so a seed / DataLoader generator reproduces an epoch.
    len = num_locations * train_cfg.drones_per_location."""

    def __init__(self, data_dir: str | Path, image_size: int, train_cfg: TrainConfig,
                 exclude: Sequence[str] = ()):
        sat_dir, drone_dir = view_dir(data_dir, "satellite"), view_dir(data_dir, "drone")
        self.satellite = _without(U1652Folder(sat_dir.parent, sat_dir.name), exclude)
        self.drone = _without(U1652Folder(drone_dir.parent, drone_dir.name), exclude)
        sat_ids, drone_ids = set(self.satellite.classes), set(self.drone.classes)
        if sat_ids != drone_ids:
            only_s, only_d = sorted(sat_ids - drone_ids)[:5], sorted(drone_ids - sat_ids)[:5]
            raise SkylocError(f"training locations differ between {sat_dir} and {drone_dir}: "
                              f"satellite-only {only_s}, drone-only {only_d}; every location needs "
                              "both views")
        self.classes = self.satellite.classes
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._sat = self._by_location(self.satellite)
        self._drone = self._by_location(self.drone)
        self.per_location = max(1, int(train_cfg.drones_per_location))
        self.sat_transform = train_transform(image_size, train_cfg.pad, True, train_cfg.sat_rotation)
        self.drone_transform = train_transform(image_size, train_cfg.pad, False)

    def _by_location(self, folder: U1652Folder) -> list[list[Path]]:
        groups: list[list[Path]] = [[] for _ in self.classes]
        for p, loc in folder.samples:
            groups[self.class_to_idx[loc]].append(p)
        return groups

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_classes * self.per_location

    def pair(self, i: int) -> tuple[Path, Path, int]:
        """Paths of row i (satellite, drone) and its label; draws from torch's RNG."""
        label = i % self.num_classes
        sats, drones = self._sat[label], self._drone[label]
        s = sats[int(torch.randint(len(sats), ()))] if len(sats) > 1 else sats[0]
        d = drones[int(torch.randint(len(drones), ()))]
        return s, d, label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        s, d, label = self.pair(i)
        sat = self.sat_transform(read_image(s))
        drone = self.drone_transform(read_image(d))
        return sat, drone, label


# --------------------------------------------------------------------------- spiral groups
def spiral_index(labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Position of each image in its location's spiral and that location's image count.

    `labels` must follow the folder's sample order (sorted files = spiral order)."""
    pos = np.zeros(len(labels), np.int64)
    count: dict[Any, int] = {}
    for i, loc in enumerate(labels):
        pos[i] = count.get(loc, 0)
        count[loc] = pos[i] + 1
    return pos, np.array([count[loc] for loc in labels], np.int64)


def distance_groups(labels: Sequence[Any]) -> np.ndarray:
    """'long' / 'middle' / 'short' per drone image: thirds of its location's spiral, first
    third (farthest, highest) = long, last third = short (paper Table 5)."""
    pos, n = spiral_index(labels)
    third = np.minimum(pos * 3 // np.maximum(n, 1), 2)
    return np.array(GROUPS, dtype=object)[third].astype(str)
