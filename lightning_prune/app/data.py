"""Lightning data modules for scikit-learn's digits (offline) and Oxford-IIIT Pet, with Pillow and torch only.

``DigitsDataModule`` needs no files: the 8x8 digits ship with scikit-learn. ``PetsDataModule`` downloads the
official Oxford-IIIT Pet archives once (``prepare_data``), checks their md5 and extracts them safely.

>>> datamodule = DigitsDataModule(size=16, channels=1)
>>> datamodule.setup()
>>> images, labels = next(iter(datamodule.train_dataloader()))
>>> images.shape, datamodule.num_classes
(torch.Size([64, 1, 16, 16]), 10)
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .sampling import EpochShuffle

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PETS_BASE_URL",
    "PETS_MD5",
    "DigitsDataModule",
    "EvalImageTransform",
    "ImageFileDataset",
    "PetsDataModule",
    "TrainImageTransform",
    "download_url",
    "extract_tarball",
    "file_md5",
    "load_rgb",
    "to_normalized_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PETS_BASE_URL = "https://thor.robots.ox.ac.uk/datasets/pets"
PETS_MD5 = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdb3f1b2",
}
PETS_NUM_BREEDS = 37

_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------
# Downloads and archives
# ----------------------------------------------------------------------------------------------------


def file_md5(path: str | os.PathLike) -> str:
    """The hexadecimal md5 of a file, read in chunks.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = path.write_bytes(b"hello")
    >>> file_md5(path)
    '5d41402abc4b2a76b9719d911017c592'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _show_progress(name: str, done: int, total: int | None) -> None:
    if total:
        bar = "#" * int(30 * done / total)
        sys.stderr.write(f"\r{name}: [{bar:<30}] {100 * done / total:5.1f}% of {total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{name}: {done / 1e6:.1f} MB")
    sys.stderr.flush()


def download_url(
    url: str,
    destination: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to the file ``destination``, atomically, and check its md5 when ``md5`` is given.

    The data goes to a temporary file in the destination's folder that replaces ``destination`` only once
    it is complete and verified, so an interrupted or corrupt download never leaves a partial file under the
    final name. A checksum mismatch raises ``RuntimeError``; network failures raise
    ``urllib.error.URLError`` or ``OSError``. ``progress`` draws a progress bar on stderr.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "source.txt").write_bytes(b"hello")
    >>> source = folder / "source.txt"
    >>> copy = download_url(source.as_uri(), folder / "copy.txt", md5=file_md5(source), progress=False)
    >>> copy.read_bytes()
    b'hello'
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done, last_shown = 0, 0.0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and time.monotonic() - last_shown > 0.5:
                    _show_progress(destination.name, done, total)
                    last_shown = time.monotonic()
        if progress:
            _show_progress(destination.name, done, total)
            sys.stderr.write("\n")
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise RuntimeError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {digest.hexdigest()}; "
                "the download was discarded, try again"
            )
        os.replace(partial, destination)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return destination


def _escapes(path: str) -> bool:
    """Whether a relative POSIX path, normalised lexically, climbs above its starting folder."""
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _through_link(path: str, links: set[str]) -> bool:
    """Whether ``path`` goes through one of the archive's links (which may lead anywhere once extracted)."""
    parts = PurePosixPath(posixpath.normpath(path)).parts
    return any(posixpath.join(*parts[:i]) in links for i in range(1, len(parts)))


def _unsafe_reason(member: tarfile.TarInfo, links: set[str]) -> str | None:
    name = member.name
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return "an absolute path"
    if ".." in PurePosixPath(name).parts or _escapes(name):
        return "'..' in its path"
    if _through_link(name, links):
        return "a path through a link"
    if member.isdev():
        return "a device or FIFO type"
    if member.issym() or member.islnk():
        if PurePosixPath(member.linkname).is_absolute() or PureWindowsPath(member.linkname).anchor:
            return "a link to an absolute path"
        # a symlink is relative to its own folder, a hard link to the archive's root
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.join(base, member.linkname)
        if _escapes(target):
            return "a link pointing outside the destination"
        if _through_link(target, links):
            return "a link through another link"
    return None


def extract_tarball(archive: str | os.PathLike, destination: str | os.PathLike) -> list[Path]:
    """Extract a (compressed) tar archive safely into ``destination``; returns the top-level paths created.

    Every member is checked before anything is written: absolute paths, ``..`` components, links pointing
    outside ``destination`` and device files raise ``ValueError``. The archive is unpacked into a temporary
    folder inside ``destination`` and its top-level entries are then moved into place, so an interrupted
    extraction leaves no half-filled folder behind. An existing non-empty entry of the same name raises
    ``FileExistsError``.

    >>> import io, tarfile, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with tarfile.open(folder / "a.tar.gz", "w:gz") as tar:
    ...     info = tarfile.TarInfo("notes/readme.txt"); info.size = 2
    ...     tar.addfile(info, io.BytesIO(b"hi"))
    >>> [path.name for path in extract_tarball(folder / "a.tar.gz", folder / "out")]
    ['notes']
    >>> (folder / "out" / "notes" / "readme.txt").read_text()
    'hi'
    """
    root = Path(destination)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        links = {posixpath.normpath(member.name) for member in members if member.issym() or member.islnk()}
        for member in members:
            reason = _unsafe_reason(member, links)
            if reason is not None:
                raise ValueError(f"refusing to extract {archive}: member {member.name!r} has {reason}")
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
        try:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.10/3.11 patch releases
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
            created = []
            for entry in sorted(staging.iterdir()):
                target = root / entry.name
                if target.is_dir() and not any(target.iterdir()):
                    target.rmdir()
                elif target.exists() or target.is_symlink():
                    raise FileExistsError(f"{target} already exists; remove it to extract {archive}")
                os.replace(entry, target)
                created.append(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return created


# ----------------------------------------------------------------------------------------------------
# Image loading and transforms: Pillow + torch, randomness from torch's RNG so DataLoader seeding applies
# ----------------------------------------------------------------------------------------------------


def load_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open an image file as RGB, whatever its mode (grayscale, CMYK, RGBA, palette) or actual format.

    ``draft_size`` lets JPEG decoding downscale to no less than ``draft_size`` pixels a side, which is cheap.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "gray.jpg"
    >>> Image.new("L", (5, 4)).save(path)
    >>> load_rgb(path).mode, load_rgb(path).size
    ('RGB', (5, 4))
    """
    with Image.open(path) as image:
        if draft_size is not None:
            image.draft("RGB", (draft_size, draft_size))
        if image.mode == "P":  # palette transparency converts cleanly only through RGBA
            image = image.convert("RGBA")
        return image.convert("RGB")


def to_normalized_tensor(
    image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """An RGB image as a float CHW tensor in [0, 1], then normalised per channel: ``(x - mean) / std``.

    >>> white = Image.new("RGB", (3, 2), (255, 255, 255))
    >>> to_normalized_tensor(white, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[:, 0, 0]
    tensor([1., 1., 1.])
    """
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


class TrainImageTransform:
    """Random resized crop (torchvision's ``RandomResizedCrop`` algorithm) to ``size`` x ``size``, random
    horizontal flip, then :func:`to_normalized_tensor`.

    The crop covers a fraction of the area drawn uniformly from ``scale`` with an aspect ratio drawn
    log-uniformly from ``ratio``; after 10 failed draws it falls back to a centre crop of clamped aspect
    ratio.

    >>> TrainImageTransform(32)(Image.new("RGB", (50, 40))).shape
    torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.scale, self.ratio, self.mean, self.std = size, scale, ratio, mean, std

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop as ``(top, left, height, width)``, drawn with torch's RNG."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(torch.randint(0, height - crop_h + 1, (1,)).item())
                left = int(torch.randint(0, width - crop_w + 1, (1,)).item())
                return top, left, crop_h, crop_w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            crop_w, crop_h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            crop_w, crop_h = round(height * max(self.ratio)), height
        else:
            crop_w, crop_h = width, height
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, crop_h, crop_w = self.crop_box(*image.size)
        box = (left, top, left + crop_w, top + crop_h)
        image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
        if torch.rand(1).item() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(image, self.mean, self.std)


class EvalImageTransform:
    """Resize the shorter side to ``size``, centre-crop ``size`` x ``size``, then
    :func:`to_normalized_tensor`.

    >>> EvalImageTransform(32)(Image.new("RGB", (30, 50))).shape
    torch.Size([3, 32, 32])
    """

    def __init__(
        self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        image = image.resize((new_w, new_h), Image.BILINEAR)
        top = round((new_h - self.size) / 2)
        left = round((new_w - self.size) / 2)
        image = image.crop((left, top, left + self.size, top + self.size))
        return to_normalized_tensor(image, self.mean, self.std)


class ImageFileDataset(Dataset):
    """``(transform(load_rgb(path)), label)`` pairs from lists of image files and integer labels.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jpg"
    >>> Image.new("RGB", (40, 30)).save(path)
    >>> image, label = ImageFileDataset([path], [1], EvalImageTransform(16))[0]
    >>> image.shape, label
    (torch.Size([3, 16, 16]), 1)
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels, self.transform = list(files), list(labels), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.files[index])), self.labels[index]


# ----------------------------------------------------------------------------------------------------
# Data modules
# ----------------------------------------------------------------------------------------------------


def _loader(
    dataset: Dataset | None, batch_size: int, num_workers: int, shuffle_seed: int | None = None
) -> DataLoader:
    if dataset is None:
        raise RuntimeError("call setup() before asking for a dataloader")
    sampler = None if shuffle_seed is None else EpochShuffle(dataset, shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=None if sampler is None else sampler.generator,  # epoch-seeded worker seeds too
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class _SplitDataModule(pl.LightningDataModule):
    """Loaders over ``train_dataset`` and ``val_dataset`` (the test loader is the validation loader); training
    batches are shuffled with ``seed``."""

    train_dataset: Dataset
    val_dataset: Dataset
    batch_size: int
    num_workers: int
    seed: int

    def train_dataloader(self) -> DataLoader:
        return _loader(self.train_dataset, self.batch_size, self.num_workers, shuffle_seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.val_dataset, self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class DigitsDataModule(_SplitDataModule):
    """scikit-learn's 1,797 handwritten digits (8x8, bundled with scikit-learn, so fully offline).

    Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to ``size`` x ``size``, repeated to ``channels``
    (1 or 3) and normalised with a fixed mean and std of 0.5, so values lie in [-1, 1]. The train/val split
    is stratified by class and seeded by ``seed`` (``val_fraction`` of the images, rounded up, go to val); the
    test loader serves the val split. All tensors live in memory.

    >>> datamodule = DigitsDataModule(size=32, channels=3)
    >>> datamodule.input_shape, datamodule.num_classes
    ((3, 32, 32), 10)
    """

    num_classes = 10

    def __init__(
        self,
        size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} is invalid; choose 1 or 3")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        self.size, self.channels, self.batch_size = size, channels, batch_size
        self.val_fraction, self.seed, self.num_workers = val_fraction, seed, num_workers
        self.input_shape = (channels, size, size)
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = torch.nn.functional.interpolate(
            images, size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        images = ((images - 0.5) / 0.5).repeat(1, self.channels, 1, 1)
        labels = torch.tensor(digits.target, dtype=torch.long)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.val_fraction,
            stratify=digits.target,
            random_state=self.seed,
        )
        self.train_indices, self.val_indices = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        self.train_dataset = TensorDataset(images[self.train_indices], labels[self.train_indices])
        self.val_dataset = TensorDataset(images[self.val_indices], labels[self.val_indices])


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _read_stems(listing: Path) -> list[str]:
    """First token of each line of an Oxford-IIIT Pet annotation list, skipping ``#`` comments and blanks."""
    lines = listing.read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


class PetsDataModule(_SplitDataModule):
    """Oxford-IIIT Pet: 7,349 photos of 37 cat and dog breeds, as cat-vs-dog or as breeds.

    ``task="binary"``: the fastai convention, class 1 = cat (file names of cat breeds start with a capital
    letter), class 0 = dog. ``task="breeds"``: 37 classes, the breed names (file name up to the last ``_``)
    sorted case-sensitively, so the 12 capitalised cat breeds come first; ``classes`` lists them after
    ``setup()``. Note this is not the order of the CLASS_ID column of ``annotations/list.txt``.

    ``prepare_data()`` downloads ``images.tar.gz`` and ``annotations.tar.gz`` from ``base_url`` into
    ``root`` unless ``root/images`` (and ``root/annotations``) already hold files, checks their md5 against
    ``checksums`` (file name -> md5, the official values by default; a file missing from the mapping is not
    checked) and extracts them. The archives are kept in ``root`` and reused; they may be deleted once
    extracted. With ``download=False`` only ``root/images`` is required.

    The split is the official one when ``annotations/trainval.txt`` and ``annotations/test.txt`` exist
    (train = trainval, val = test = the test list), otherwise a ``seed``-ed random split of all images with
    ``val_fraction`` of them in val. ``setup()`` decodes every image once (cheaply, at reduced JPEG scale) and
    drops unreadable files with a single warning; grayscale, CMYK, palette and PNG-under-``.jpg`` files are
    converted to RGB when loaded.

    Train images get a random resized crop (area 35-100%) and a random horizontal flip, eval images a resize
    of the shorter side and a centre crop; both end ``size`` x ``size`` with ImageNet normalisation.

    >>> PetsDataModule(root="data/pets", task="breeds").num_classes
    37
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/pets",
        task: str = "binary",
        size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = True,
        val_fraction: float = 0.2,
        base_url: str = PETS_BASE_URL,
        checksums: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("binary", "breeds"):
            raise ValueError(f"task={task!r} is invalid; choose 'binary' or 'breeds'")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        self.root, self.task, self.size, self.batch_size = Path(root), task, size, batch_size
        self.num_workers, self.seed, self.download = num_workers, seed, download
        self.val_fraction = val_fraction
        self.base_url = base_url.rstrip("/")
        self.checksums = dict(PETS_MD5 if checksums is None else checksums)
        self.num_classes = 2 if task == "binary" else PETS_NUM_BREEDS
        self.input_shape = (3, size, size)
        self.classes: list[str] = ["dog", "cat"] if task == "binary" else []
        self.dropped_files: list[Path] = []
        self.train_dataset: ImageFileDataset | None = None
        self.val_dataset: ImageFileDataset | None = None

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    def _missing_error(self, reason: str) -> RuntimeError:
        return RuntimeError(
            f"The Oxford-IIIT Pet dataset is not available: {reason}. Put the files in place by hand: "
            f"{self.images_dir}/*.jpg and {self.annotations_dir}/{{list.txt,trainval.txt,test.txt}} "
            f"(or the archives images.tar.gz and annotations.tar.gz in {self.root}). "
            "To run fully offline, use the digits data instead: data=digits."
        )

    def prepare_data(self) -> None:
        for folder in (self.images_dir, self.annotations_dir):
            if _has_files(folder):
                continue
            if not self.download and folder == self.annotations_dir:
                continue  # optional: setup() then splits at random
            archive = self.root / f"{folder.name}.tar.gz"
            expected = self.checksums.get(archive.name)
            if not (archive.is_file() and (expected is None or file_md5(archive) == expected)):
                url = f"{self.base_url}/{archive.name}"
                if not self.download:
                    raise self._missing_error(f"{folder} is missing and download=False")
                try:
                    download_url(url, archive, md5=expected)
                except OSError as error:  # URLError and HTTPError are OSErrors
                    raise self._missing_error(f"it could not be downloaded from {url} ({error})") from error
            extract_tarball(archive, self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        all_files = sorted(self.images_dir.glob("*.jpg")) if self.images_dir.is_dir() else []
        if not all_files:
            raise self._missing_error(f"no images in {self.images_dir} (was prepare_data() run?)")
        if self.task == "breeds":
            self.classes = sorted({path.stem.rsplit("_", 1)[0] for path in all_files})
            if len(self.classes) > self.num_classes:
                raise ValueError(
                    f"{len(self.classes)} breeds in {self.images_dir}, expected at most {self.num_classes}"
                )

        train_files, val_files = self._split(all_files)
        self.dropped_files = [path for path in sorted({*train_files, *val_files}) if not self._readable(path)]
        if self.dropped_files:
            warnings.warn(
                f"skipping {len(self.dropped_files)} unreadable image(s) in {self.images_dir}: "
                + ", ".join(path.name for path in self.dropped_files),
                stacklevel=2,
            )
        dropped = set(self.dropped_files)
        train_files = [path for path in train_files if path not in dropped]
        val_files = [path for path in val_files if path not in dropped]
        self.train_dataset = ImageFileDataset(
            train_files, [self.label(path) for path in train_files], TrainImageTransform(self.size)
        )
        self.val_dataset = ImageFileDataset(
            val_files, [self.label(path) for path in val_files], EvalImageTransform(self.size)
        )

    def _split(self, all_files: list[Path]) -> tuple[list[Path], list[Path]]:
        trainval, test = self.annotations_dir / "trainval.txt", self.annotations_dir / "test.txt"
        if trainval.is_file() and test.is_file():
            by_stem = {path.stem: path for path in all_files}
            return (
                [by_stem[stem] for stem in _read_stems(trainval) if stem in by_stem],
                [by_stem[stem] for stem in _read_stems(test) if stem in by_stem],
            )
        order = torch.randperm(len(all_files), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = round(self.val_fraction * len(all_files))
        return sorted(all_files[i] for i in order[n_val:]), sorted(all_files[i] for i in order[:n_val])

    def _readable(self, path: Path) -> bool:
        try:
            load_rgb(path, draft_size=self.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return False
        return True

    def label(self, path: str | os.PathLike) -> int:
        """The class index of an image file: 1 = cat / 0 = dog, or the breed's index in ``classes``."""
        stem = Path(path).stem
        if self.task == "binary":
            return int(stem[0].isupper())
        return self.classes.index(stem.rsplit("_", 1)[0])

