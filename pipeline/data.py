"""Datasets as in-memory tensors: .npz (x uint8 NHWC or float NCHW; y class labels, or for detection `boxes`
(N, M, 4) xyxy pixels with `box_classes` (N, M), -1 where there is no box, or for segmentation `masks` (N, H, W),
255 ignored) or an ImageFolder directory/tarball. Images stay uint8 until a batch is normalised, so CIFAR-10's
50k training images take 150 MB."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import OTCError

IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


TARGET_KEYS = ("boxes", "box_classes", "masks")


@dataclass
class Dataset:
    x: torch.Tensor  # uint8 NCHW (raw pixels) or float NCHW (already scaled)
    y: torch.Tensor | None
    targets: dict[str, np.ndarray] | None = None  # detection boxes/classes or segmentation masks, per sample

    def __len__(self):
        return self.x.shape[0]

    def take(self, idx) -> "Dataset":
        return Dataset(self.x[idx], self.y[idx] if self.y is not None else None,
                       {k: v[np.asarray(idx) if not isinstance(idx, slice) else idx] for k, v in self.targets.items()}
                       if self.targets else None)

    @property
    def labels(self):
        """Class labels, else the targets dict, else None (what the gate's fidelity checks compare with)."""
        return self.y if self.y is not None else self.targets

    def batch(self, idx, mean=None, std=None) -> torch.Tensor:
        x = self.x[idx]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if mean is not None:
            m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - m) / s
        return x


def _from_npz(path: Path) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
        x = z["x"]
        y = z["y"] if "y" in z.files else None
        targets = {k: z[k] for k in TARGET_KEYS if k in z.files} or None
    except KeyError:
        raise OTCError(f"{path}: .npz needs an array 'x' (and 'y' for labels); it has {list(np.load(path).files)}") from None
    except Exception as e:
        raise OTCError(f"{path}: not a readable .npz file ({e})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise OTCError(f"{path}: x has shape {x.shape}; expected (N,H,W,C) uint8 or (N,C,H,W) float")
    if x.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    else:
        t = torch.from_numpy(x.astype(np.float32))
    if y is not None and len(y) != len(x):
        raise OTCError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    for k, v in (targets or {}).items():
        if len(v) != len(x):
            raise OTCError(f"{path}: x has {len(x)} samples but {k} has {len(v)}")
    if targets and ("boxes" in targets) != ("box_classes" in targets):
        raise OTCError(f"{path}: detection labels need both 'boxes' (N, M, 4) and 'box_classes' (N, M)")
    return Dataset(t, torch.from_numpy(y.astype(np.int64)) if y is not None else None, targets)


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB"))


def _stack(items: list[tuple[str, str, bytes]], where: Path, pick=None) -> Dataset:
    """Decode an ImageFolder's images (sorted by class and name), or only the `pick` indices of them."""
    if not items:
        raise OTCError(f"{where}: no images found; expected an ImageFolder layout <root>/<class>/<image>")
    classes = sorted({c for c, _, _ in items})
    items.sort(key=lambda t: (t[0], t[1]))
    if pick is not None:
        items = [items[i] for i in pick]
    arrs = [_decode(b) for _, _, b in items]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise OTCError(f"{where}: images have different shapes {sorted(shapes)[:3]}; resize them first")
    x = np.stack(arrs)
    if x.ndim == 3:
        x = x[..., None]
    y = np.array([classes.index(c) for c, _, _ in items])
    return Dataset(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y))


def _items(path: Path) -> list[tuple[str, str, bytes]]:
    """An ImageFolder directory's or tarball's images as (class, name, encoded bytes), not yet decoded."""
    if path.is_dir():
        return [(f.parent.name, f.name, f.read_bytes()) for f in path.glob("*/*") if f.suffix.lower() in IMG_EXT]
    items = []
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                p = Path(m.name)
                if m.isfile() and p.suffix.lower() in IMG_EXT:
                    items.append((p.parent.name, p.name, tf.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise OTCError(f"{path}: not a readable tar archive ({e})") from None
    return items


def has_labels(path: str | Path) -> bool:
    """Whether a data source carries labels, without loading it (ImageFolders are labelled by their folders)."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return "y" in z.files
        except Exception as e:
            raise OTCError(f"{path}: not a readable .npz file ({e})") from None
    return True


_CACHE: dict[tuple, Dataset] = {}


def sample_dataset(path: str | Path, n: int, seed: int = 0) -> Dataset:
    """n images drawn at random (seeded, without replacement): an ImageFolder decodes only those."""
    path = Path(path)
    if path.suffix == ".npz" or n <= 0:
        ds = load_dataset(path)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return ds.take(idx.numpy())
    _check_format(path)
    items = _items(path)
    idx = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    return _stack(items, path, idx)


def _check_format(path: Path) -> None:
    if not (path.is_dir() or path.suffix == ".npz" or path.name.endswith((".tar", ".tar.gz", ".tgz"))):
        raise OTCError(f"{path}: unknown data format; expected .npz, an ImageFolder directory or a .tar(.gz) of one")


def load_dataset(path: str | Path, limit: int | None = None) -> Dataset:
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else None)
    if key not in _CACHE:
        _check_format(path)
        ds = _from_npz(path) if path.suffix == ".npz" else _stack(_items(path), path)
        _CACHE[key] = ds
    ds = _CACHE[key]
    if limit is not None and limit < len(ds):
        return ds.take(slice(0, limit))
    return ds
