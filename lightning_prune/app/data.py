"""Lightning data modules for scikit-learn's digits (offline), CIFAR-10 and Oxford-IIIT Pet.

``DigitsDataModule`` needs no files: the 8x8 digits ship with scikit-learn. ``CIFAR10DataModule`` reads a local
copy laid out for torchvision's ``ImageFolder`` (or a ``.tar.gz`` of it, extracted once), or downloads the
official release with ``torchvision.datasets.CIFAR10``. ``PetsDataModule`` uses
``torchvision.datasets.OxfordIIITPet`` (download, md5 check, extraction, official split), skipping unreadable
files. Transforms are ``torchvision.transforms.v2`` pipelines.

>>> datamodule = DigitsDataModule(size=16, channels=1)
>>> datamodule.setup()
>>> images, labels = next(iter(datamodule.train_dataloader()))
>>> images.shape, datamodule.num_classes
(torch.Size([64, 1, 16, 16]), 10)
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.datasets import CIFAR10, ImageFolder, OxfordIIITPet
from torchvision.transforms import v2

from .sampling import EpochShuffle

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "PetImages",
    "PetsDataModule",
    "balanced_subset",
    "cifar10_transform",
    "extract_tarball",
    "imagenet_transform",
    "load_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# per-channel mean and standard deviation of the 50,000 CIFAR-10 training images
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_SIZE, CIFAR10_TEST_SIZE = 50_000, 10_000
PETS_NUM_BREEDS = 37


# ----------------------------------------------------------------------------------------------------
# Local archives: torchvision extracts with tarfile's defaults, which trust the archive; a local copy
# is checked member by member and moved into place only once complete
# ----------------------------------------------------------------------------------------------------


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
# Images and transforms (torchvision.transforms.v2; randomness from torch's RNG, so DataLoader seeding applies)
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




def imagenet_transform(size: int, train: bool) -> v2.Compose:
    """Photos to ``size`` x ``size`` tensors with ImageNet normalisation.

    Training: a random resized crop (35-100% of the area) and a random horizontal flip; evaluation: the
    shorter side resized to ``size`` and a centre crop.

    >>> imagenet_transform(32, train=True)(Image.new("RGB", (50, 40))).shape
    torch.Size([3, 32, 32])
    """
    geometry = (
        [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    )
    return v2.Compose(
        [*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def cifar10_transform(train: bool) -> v2.Compose:
    """CIFAR-10's standard pipeline: for training a random 32x32 crop of the image zero-padded by 4 pixels and
    a random horizontal flip; always CIFAR-10 mean/std normalisation.

    >>> cifar10_transform(train=True)(Image.new("RGB", (32, 32))).shape
    torch.Size([3, 32, 32])
    """
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose(
        [v2.ToImage(), *augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )


def balanced_subset(targets: Sequence[int], size: int, seed: int = 0, key: str = "train_subset") -> list[int]:
    """Sorted indices of ``size`` samples spread evenly over the classes of ``targets``, drawn with ``seed``.

    Every class gets ``size // n_classes`` samples; the remainder goes, one each, to classes drawn at random.
    A class with too few samples raises ``ValueError`` naming ``key``.

    >>> targets = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    >>> [targets[i] for i in balanced_subset(targets, size=4)]
    [0, 0, 1, 1]
    """
    labels = torch.as_tensor(list(targets))
    classes = torch.unique(labels).tolist()
    generator = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(size, len(classes))
    bonus = set(torch.randperm(len(classes), generator=generator)[:extra].tolist())
    picked: list[int] = []
    for position, label in enumerate(classes):
        members = (labels == label).nonzero().flatten()
        wanted = per_class + (position in bonus)
        if wanted > len(members):
            raise ValueError(
                f"{key}={size} is invalid: class {label} has only {len(members)} images; "
                f"a balanced subset of these {len(labels)} images must have at most "
                f"{len(classes) * int(torch.bincount(labels).min())} of them"
            )
        picked += members[torch.randperm(len(members), generator=generator)[:wanted]].tolist()
    return sorted(picked)


class PetImages(OxfordIIITPet):
    """torchvision's Oxford-IIIT Pet (its download, md5 check, extraction and split lists) for one task.

    ``task="binary"`` gives torchvision's ``binary-category`` target (0 = cat, 1 = dog), ``"breeds"`` its
    37-class ``category``. Images are read with :func:`load_rgb`, so grayscale, CMYK, palette and PNG files
    (the real archive has a few of each, some under a ``.jpg`` name) all become RGB. ``files`` and
    ``targets`` list every image of the split with its label.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        task: str,
        transform: Callable[[Image.Image], Any] | None = None,
        download: bool = False,
    ) -> None:
        target_type = "binary-category" if task == "binary" else "category"
        super().__init__(root, split=split, target_types=target_type, transform=transform, download=download)
        self.files: list[Path] = list(self._images)
        self.targets: list[int] = list(self._bin_labels if task == "binary" else self._labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = load_rgb(self.files[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


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




def _check_subset(key: str, value: object, total: int) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 10 <= value <= total):
        raise ValueError(
            f"{key}={value!r} is invalid; it must be null (all {total:,} images) or an integer in [10, {total}] "
            "(a class-balanced subset)"
        )


class CIFAR10DataModule(_SplitDataModule):
    """CIFAR-10 (Krizhevsky, 2009): 60,000 32x32 colour images of 10 classes; 50,000 train, 10,000 test.

    The images come from the first of these that exists:

    1. ``root/train/<class>/*`` and ``root/test/<class>/*``: a local copy in ``ImageFolder``'s layout (JPEG
       or any format Pillow reads), laid out by hand or extracted from ``archive``;
    2. ``root/cifar-10-batches-py``: torchvision's copy of the official (python) release;
    3. ``archive``: a ``.tar.gz`` (or ``.tar``) holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` at
       its top level, extracted into ``root`` once by ``prepare_data()``;
    4. with ``download=True``, ``torchvision.datasets.CIFAR10`` downloads the official release into ``root``.

    The class folders must be CIFAR-10's ten class names (:data:`CIFAR10_CLASSES`, which sort into
    CIFAR-10's label order). Validation and test use the test split. ``train_subset=N`` trains on a
    class-balanced, ``seed``-ed subset of N training images (:func:`balanced_subset`), ``val_subset=M``
    validates on one of M test images: for short CPU runs.
    Training images get :func:`cifar10_transform` (padded random crop, flip), all images its normalisation.

    >>> CIFAR10DataModule(root="data/cifar10").input_shape
    (3, 32, 32)
    """

    num_classes = 10
    classes = list(CIFAR10_CLASSES)

    def __init__(
        self,
        root: str | os.PathLike = "data/cifar10",
        archive: str | os.PathLike | None = None,
        download: bool = True,
        train_subset: int | None = None,
        val_subset: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_subset("train_subset", train_subset, CIFAR10_TRAIN_SIZE)
        _check_subset("val_subset", val_subset, CIFAR10_TEST_SIZE)
        self.root = Path(root)
        self.archive = None if archive is None else Path(archive)
        self.download, self.train_subset, self.val_subset = download, train_subset, val_subset
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.input_shape = (3, 32, 32)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        if not download and self._layout() is None and not self._archive_found():
            raise self._missing_error("download=False")

    def _layout(self) -> str | None:
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return "folders"
        if (self.root / CIFAR10.base_folder).is_dir():
            return "torchvision"
        return None

    def _archive_found(self) -> bool:
        return self.archive is not None and self.archive.is_file()

    def _missing_error(self, reason: str) -> FileNotFoundError:
        archive = "no archive given" if self.archive is None else f"the archive {str(self.archive)!r} (not found)"
        return FileNotFoundError(
            f"CIFAR-10 is not available: {reason}. Looked for {self.root}/train and {self.root}/test "
            f"(train/<class>/*.jpg, test/<class>/*.jpg), {self.root}/{CIFAR10.base_folder} (torchvision's copy) "
            f"and {archive}. Set data.root to a folder holding one of them, data.archive to a .tar.gz of "
            "train/<class>/*.jpg and test/<class>/*.jpg, or data.download=true to download CIFAR-10."
        )

    def prepare_data(self) -> None:
        if self._layout() is not None:
            return
        if self._archive_found():
            extract_tarball(self.archive, self.root)
            if self._layout() != "folders":
                raise ValueError(
                    f"data.archive={str(self.archive)!r} does not hold train/<class>/*.jpg and test/<class>/*.jpg "
                    f"at its top level (extracted into {self.root})"
                )
            return
        if not self.download:
            raise self._missing_error("download=False")
        try:
            CIFAR10(self.root, train=True, download=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 a RuntimeError
            raise self._missing_error(f"it could not be downloaded from {CIFAR10.url} ({error})") from error

    def _folder(self, split: str, train: bool) -> ImageFolder:
        dataset = ImageFolder(self.root / split, transform=cifar10_transform(train))
        if tuple(dataset.classes) != CIFAR10_CLASSES:
            raise ValueError(
                f"the class folders of {self.root / split} are {dataset.classes}; "
                f"CIFAR-10's are {list(CIFAR10_CLASSES)}"
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        layout = self._layout()
        if layout == "folders":
            train, test = self._folder("train", train=True), self._folder("test", train=False)
        elif layout == "torchvision":
            train = CIFAR10(self.root, train=True, transform=cifar10_transform(True))
            test = CIFAR10(self.root, train=False, transform=cifar10_transform(False))
        else:
            raise self._missing_error("prepare_data() has not put it in place (was it run?)")
        self.train_dataset = self._subset(train, "train_subset", self.train_subset)
        self.val_dataset = self._subset(test, "val_subset", self.val_subset)

    def _subset(self, dataset: ImageFolder | CIFAR10, key: str, size: int | None) -> Dataset:
        if size is None:
            return dataset
        return Subset(dataset, balanced_subset(dataset.targets, size, self.seed, key=key))


def _unreadable(path: Path, size: int) -> bool:
    try:
        load_rgb(path, draft_size=size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return True
    return False


class PetsDataModule(_SplitDataModule):
    """Oxford-IIIT Pet: 7,349 photos of 37 cat and dog breeds, as cat-vs-dog or as breeds.

    The data set is torchvision's :class:`~torchvision.datasets.OxfordIIITPet` (here :class:`PetImages`): it
    lives in ``root/oxford-iiit-pet/`` (``images/*.jpg`` and ``annotations/{trainval,test}.txt``), and
    ``prepare_data()`` downloads and extracts the official archives there unless those folders exist (the
    archives ``images.tar.gz`` and ``annotations.tar.gz`` already in that folder are checked and used, not
    downloaded again). Offline, lay out those files by hand.

    ``task="binary"``: torchvision's species label, 0 = cat and 1 = dog. ``task="breeds"``: the 37 breeds in
    the order of the CLASS_ID column; ``classes`` names the classes after ``setup()``. Training uses the
    official trainval list, validation and test the test list.

    ``setup()`` checks every image once (cheaply, at reduced JPEG scale) and leaves out unreadable files with a
    single warning (``dropped_files`` lists them); grayscale, CMYK, palette and PNG files are converted to RGB.
    Training images get :func:`imagenet_transform`'s random resized crop and flip, evaluation images its
    resize and centre crop, both ending ``size`` x ``size``.

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
    ) -> None:
        super().__init__()
        if task not in ("binary", "breeds"):
            raise ValueError(f"task={task!r} is invalid; choose 'binary' or 'breeds'")
        self.root, self.task, self.size, self.batch_size = Path(root), task, size, batch_size
        self.num_workers, self.seed, self.download = num_workers, seed, download
        self.num_classes = 2 if task == "binary" else PETS_NUM_BREEDS
        self.input_shape = (3, size, size)
        self.classes: list[str] = ["Cat", "Dog"] if task == "binary" else []
        self.dropped_files: list[Path] = []
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    @property
    def folder(self) -> Path:
        """Where the data set lives: ``root/oxford-iiit-pet`` (torchvision's layout)."""
        return self.root / "oxford-iiit-pet"

    def _missing_error(self, reason: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"The Oxford-IIIT Pet dataset is not available: {reason}. Put the files in place by hand: "
            f"{self.folder}/images/*.jpg and {self.folder}/annotations/{{trainval.txt,test.txt}} "
            f"(or the archives images.tar.gz and annotations.tar.gz in {self.folder}), set data.root to the "
            "folder holding oxford-iiit-pet/, or run fully offline with data=digits or data=cifar10."
        )

    def _images(self, split: str, transform: Callable[[Image.Image], Any] | None = None) -> PetImages:
        try:
            return PetImages(self.root, split, self.task, transform=transform)
        except RuntimeError as error:  # torchvision: "Dataset not found"
            raise self._missing_error(f"no images/ and annotations/ in {self.folder}") from error

    def prepare_data(self) -> None:
        if not self.download:
            self._images("trainval")
            return
        try:
            PetImages(self.root, "trainval", self.task, download=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 a RuntimeError
            raise self._missing_error(f"it could not be downloaded ({error})") from error

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train = self._images("trainval", imagenet_transform(self.size, train=True))
        val = self._images("test", imagenet_transform(self.size, train=False))
        if self.task == "breeds":
            self.classes = list(train.classes)
        self.dropped_files = sorted({f for f in train.files + val.files if _unreadable(f, self.size)})
        if self.dropped_files:
            # stacklevel=1: the warning points here, not at Lightning's code that called setup()
            warnings.warn(
                f"skipping {len(self.dropped_files)} unreadable image(s) in {self.folder / 'images'}: "
                + ", ".join(path.name for path in self.dropped_files),
                stacklevel=1,
            )
        dropped = set(self.dropped_files)
        self.train_dataset = Subset(train, [i for i, f in enumerate(train.files) if f not in dropped])
        self.val_dataset = Subset(val, [i for i, f in enumerate(val.files) if f not in dropped])
