"""The prepared micrographs, eigen-images and CNN of ``pick_ceiling.py``.

A sibling module of that benchmark (not a package module): each micrograph's
candidates, feature image, dense grid and CNN input (:func:`prepare`), the
eigen-image features, and the small CNN with its training and scoring.
scikit-learn and PyTorch are imported only where used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pick_real_labels import (  # a sibling module (this script's folder)
    Micrograph,
    match_tolerance_px,
)
from scipy.spatial import cKDTree

from pipelines.picking.blob import robust_sd, subtract_background
from pipelines.picking.filters import downscale_shape, fourier_crop
from pipelines.picking.learned import (
    PATCH_DIAMETERS,
    PATCH_PX,
    _candidates,
    pick_learned,
)

GRID_STRIDE = 2  # dense grid, in feature-image pixels
CNN_PX = 64  # CNN patch
CNN_STRIDE = 8  # the CNN's output stride (binned pixels)
N_COMPONENTS = 16
CNN_PATCHES_PER_EPOCH = 12000  # a random subset each epoch (CPU time)


@dataclass
class Prepared:
    mic: Micrograph
    feature_image: np.ndarray  # the learned picker's feature image (12.5 Å/px)
    feature_scale: float  # micrograph px per feature px
    cnn_image: np.ndarray  # binned for the CNN (4.7 Å/px), square, (N-64) % 8 == 0
    cnn_scale: float
    cand_xy: np.ndarray  # (n, 2) our candidates, micrograph px
    cand_features: np.ndarray  # (n, 42)
    grid_rc: np.ndarray  # (m, 2) dense grid, feature-image rows / cols
    learned_xy: np.ndarray  # the learned picker's picks at its defaults
    learned_score: np.ndarray


def _dihedral(patches: np.ndarray) -> list[np.ndarray]:
    """The eight 90-degree rotations and flips of ``(n, b, b)`` patches."""
    out = []
    for flip in (False, True):
        p = patches[:, :, ::-1] if flip else patches
        for k in range(4):
            out.append(np.rot90(p, k, axes=(1, 2)))
    return out


def _gather(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, box: int
) -> np.ndarray:
    h = box // 2
    padded = np.pad(image, h, mode="reflect")
    offsets = np.arange(box) - h
    return np.asarray(
        padded[
            (rows + h)[:, None, None] + offsets[None, :, None],
            (cols + h)[:, None, None] + offsets[None, None, :],
        ],
        dtype=np.float32,
    )


def prepare(mic: Micrograph) -> Prepared:
    d_min, d_max = sorted(mic.diameter_range_a)
    found = _candidates(
        mic.image,
        pixel_size_a=mic.pixel_size_a,
        diameter_range_a=(d_min, d_max),
        workers=1,
    )
    flat = subtract_background(mic.image)
    feature_px_a = max(mic.pixel_size_a, PATCH_DIAMETERS * d_max / PATCH_PX)
    shape = downscale_shape(mic.image.shape, feature_px_a / mic.pixel_size_a)
    small = fourier_crop(flat, shape, workers=1)
    small = (small - np.median(small)) / robust_sd(small[::2, ::2])
    cnn_px_a = PATCH_DIAMETERS * d_max / CNN_PX
    n = downscale_shape(mic.image.shape, cnn_px_a / mic.pixel_size_a)[0]
    n_crop = CNN_PX + ((n - CNN_PX) // CNN_STRIDE) * CNN_STRIDE
    binned = fourier_crop(flat, (n, n), workers=1)[:n_crop, :n_crop]
    binned = (binned - np.median(binned)) / robust_sd(binned[::2, ::2])
    g = np.arange(0, shape[0], GRID_STRIDE)
    rr, cc = np.meshgrid(g, np.arange(0, shape[1], GRID_STRIDE), indexing="ij")
    learned = pick_learned(
        mic.image, pixel_size_a=mic.pixel_size_a, diameter_range_a=(d_min, d_max)
    )
    return Prepared(
        mic=mic,
        feature_image=small.astype(np.float32),
        feature_scale=mic.image.shape[0] / shape[0],
        cnn_image=binned.astype(np.float32),
        cnn_scale=mic.image.shape[0] / n,
        cand_xy=np.column_stack([found.picks.x_px, found.picks.y_px]),
        cand_features=found.features,
        grid_rc=np.column_stack([rr.ravel(), cc.ravel()]),
        learned_xy=np.column_stack([learned.x_px, learned.y_px]),
        learned_score=learned.score,
    )


def _to_feature_rc(p: Prepared, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shape = p.feature_image.shape
    rows = np.clip(np.rint(xy[:, 1] / p.feature_scale), 0, shape[0] - 1).astype(int)
    cols = np.clip(np.rint(xy[:, 0] / p.feature_scale), 0, shape[1] - 1).astype(int)
    return rows, cols


def _near_label(p: Prepared, xy: np.ndarray, radius: float) -> np.ndarray:
    if len(p.mic.labels_xy) == 0:
        return np.zeros(len(xy), dtype=bool)
    d, _ = cKDTree(p.mic.labels_xy).query(xy)
    return np.asarray(d <= radius)


class EigenImages:
    """PCA of patches and their eight transforms; invariant features."""

    def __init__(self, patches: np.ndarray) -> None:
        rng = np.random.default_rng(0)
        pick = rng.choice(len(patches), min(len(patches), 4000), replace=False)
        stack = np.concatenate(_dihedral(patches[pick])).reshape(8 * len(pick), -1)
        self.mean = stack.mean(axis=0)
        _, _, vt = np.linalg.svd(stack - self.mean, full_matrices=False)
        self.basis = vt[:N_COMPONENTS].T.astype(np.float32)  # (b*b, k)

    def features(self, patches: np.ndarray) -> np.ndarray:
        n = len(patches)
        total = np.zeros((n, N_COMPONENTS))
        squares = np.zeros((n, N_COMPONENTS))
        for t in _dihedral(patches):
            c = (t.reshape(n, -1) - self.mean) @ self.basis
            total += c
            squares += c * c
        return np.column_stack([total / 8, np.log(squares / 8 + 1e-6)])


# ---------------------------------------------------------------- the CNN
def _make_cnn():  # type: ignore[no-untyped-def]
    import torch  # deferred: a benchmark-only dependency

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, stride=2),  # 64 -> 30
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2),  # -> 14
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, stride=2),  # -> 6
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 6),  # -> 1
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 1, 1),
    )


def _cnn_training_set(
    train: list[Prepared], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    patches, labels = [], []
    for p in train:
        tol = match_tolerance_px(p.mic)
        n_img = p.cnn_image.shape[0]
        h = CNN_PX // 2
        lab = p.mic.labels_xy / p.cnn_scale
        angle = rng.uniform(0, 2 * np.pi, len(lab))
        radius = 0.3 * tol / p.cnn_scale * np.sqrt(rng.uniform(0, 1, len(lab)))
        pos = lab + radius[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
        # negatives: random places farther than the tolerance from every label,
        # and the learned picker's own candidates that match no label (hard ones)
        rand = rng.uniform(h, n_img - h, (6 * len(lab), 2))
        rand = rand[~_near_label(p, rand * p.cnn_scale, tol)][: 2 * len(lab)]
        hard = p.cand_xy[~_near_label(p, p.cand_xy, tol)] / p.cnn_scale
        for xy, y in ((pos, 1.0), (rand, 0.0), (hard, 0.0)):
            rc = np.clip(np.rint(xy[:, ::-1]).astype(int), 0, n_img - 1)
            patches.append(_gather(p.cnn_image, rc[:, 0], rc[:, 1], CNN_PX))
            labels.append(np.full(len(xy), y, dtype=np.float32))
    return np.concatenate(patches), np.concatenate(labels)


def train_cnn(train: list[Prepared], epochs: int, seed: int):  # type: ignore[no-untyped-def]
    import torch  # deferred: a benchmark-only dependency

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = _cnn_training_set(train, rng)
    net = _make_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    pos_weight = torch.tensor(float((y == 0).sum()) / max(float(y.sum()), 1.0))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=2e-3,
        total_steps=epochs * ((min(len(x), CNN_PATCHES_PER_EPOCH) + 127) // 128),
    )
    net.train()
    per_epoch = min(len(x), CNN_PATCHES_PER_EPOCH)
    for epoch in range(epochs):
        order = torch.randperm(len(x))[:per_epoch]
        total = 0.0
        start = time.perf_counter()
        for i in range(0, per_epoch, 128):
            idx = order[i : i + 128]
            batch = xt[idx]
            k = int(rng.integers(4))
            batch = torch.rot90(batch, k, dims=(2, 3))
            if rng.integers(2):
                batch = torch.flip(batch, dims=(3,))
            out = net(batch).reshape(-1)
            loss = loss_fn(out, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"  CNN epoch {epoch + 1}/{epochs}: loss {total / per_epoch:.3f} "
            f"({per_epoch} of {len(x)} patches, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    net.eval()
    return net


def cnn_patch_scores(net, p: Prepared, xy: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch  # deferred: a benchmark-only dependency

    n_img = p.cnn_image.shape[0]
    rc = np.clip(np.rint(xy[:, ::-1] / p.cnn_scale).astype(int), 0, n_img - 1)
    patches = _gather(p.cnn_image, rc[:, 0], rc[:, 1], CNN_PX)
    out = np.zeros(len(xy))
    with torch.no_grad():
        for i in range(0, len(xy), 512):
            chunk = patches[i : i + 512]
            for t in _dihedral(chunk):
                batch = torch.from_numpy(np.ascontiguousarray(t)[:, None])
                out[i : i + 512] += net(batch).reshape(-1).numpy() / 8
    return out


def cnn_score_map(net, p: Prepared) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The network over the whole binned micrograph (fully convolutional), averaged
    over the eight transforms: scores and their micrograph (x, y)."""
    import torch  # deferred: a benchmark-only dependency

    image = p.cnn_image
    total = None
    with torch.no_grad():
        for flip in (False, True):
            img = image[:, ::-1] if flip else image
            for k in range(4):
                t = np.ascontiguousarray(np.rot90(img, k))
                out = net(torch.from_numpy(t)[None, None]).numpy()[0, 0]
                out = np.rot90(out, -k)
                if flip:
                    out = out[:, ::-1]
                total = out if total is None else total + out
    assert total is not None
    m = total.shape[0]
    centre = (np.arange(m) * CNN_STRIDE + CNN_PX / 2 - 0.5) * p.cnn_scale
    yy, xx = np.meshgrid(centre, centre, indexing="ij")
    return total / 8, np.column_stack([xx.ravel(), yy.ravel()])


def _patches_at(p: Prepared, xy: np.ndarray) -> np.ndarray:
    return _gather(p.feature_image, *_to_feature_rc(p, xy), PATCH_PX)


def _lookup(p: Prepared, xy: np.ndarray) -> np.ndarray:
    """Our features of the learned picker's picks (they are candidates)."""
    _, idx = cKDTree(p.cand_xy).query(xy)
    return np.asarray(p.cand_features[idx])
