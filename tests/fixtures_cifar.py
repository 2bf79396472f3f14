"""Tiny CIFAR-10 look-alikes: the shared archive's layout (``train/<class>/*.jpg``, ``test/<class>/*.jpg``)
and torchvision's python release (``cifar-10-batches-py/``), with a few images per class.

Each class has its own base colour plus noise, so the images of a class look alike.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_prune.app.data import CIFAR10_CLASSES


def class_images(label: int, n: int, seed: int) -> np.ndarray:
    """``n`` 32x32 RGB images (N, 32, 32, 3) of class ``label``: the class's colour plus noise."""
    rng = np.random.default_rng(seed)
    base = np.array([(37 * label) % 256, (91 * label + 60) % 256, (151 * label + 120) % 256])
    noise = rng.integers(-30, 31, size=(n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_archive(path: Path, n_train: int = 4, n_test: int = 2, prefix: str = "",
                       classes: tuple[str, ...] = CIFAR10_CLASSES) -> Path:
    """Write a ``.tar.gz`` laid out like ``../shared/data/cifar10-jpg.tar.gz``; returns ``path``."""
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            for label, name in enumerate(classes):
                seed = label + (0 if split == "train" else 1000)
                for index, pixels in enumerate(class_images(label, n, seed=seed)):
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
                    _add(tar, f"{prefix}{split}/{name}/{index:04d}.jpg", buffer.getvalue())
    return path


def make_cifar_python_tarball(path: Path, n_train: int = 2, n_test: int = 1) -> tuple[Path, dict[str, str]]:
    """Write a ``cifar-10-python.tar.gz`` in torchvision's format (five training batches, a test batch and
    ``batches.meta``, pickled); returns its path and the md5 of each file inside."""
    import hashlib

    files: dict[str, bytes] = {}
    for name, n, seed in [*((f"data_batch_{i}", n_train, i) for i in range(1, 6)), ("test_batch", n_test, 9)]:
        images = np.concatenate([class_images(label, n, seed=seed * 100 + label) for label in range(10)])
        labels = [label for label in range(10) for _ in range(n)]
        data = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # rows of R, G, B planes
        files[name] = pickle.dumps({"data": data, "labels": labels})
    files["batches.meta"] = pickle.dumps({"label_names": list(CIFAR10_CLASSES)})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            _add(tar, f"cifar-10-batches-py/{name}", data)
    return path, {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
