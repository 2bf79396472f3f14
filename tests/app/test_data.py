"""Digits and Oxford-IIIT Pet data modules, transforms, downloads and safe extraction (no network needed)."""

from __future__ import annotations

import hashlib
import io
import math
import shutil
import tarfile
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_pets import CMYK, GRAYSCALE, PNG_AS_JPG, UNREADABLE, make_pets_fixture, pack_pets_tarballs
from PIL import Image
from sklearn.datasets import load_digits

from lightning_prune.app.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DigitsDataModule,
    EvalImageTransform,
    PetsDataModule,
    TrainImageTransform,
    extract_tarball,
    load_rgb,
    to_normalized_tensor,
)

# --------------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_digits().target


def test_digits_batches_have_the_declared_shape():
    datamodule = DigitsDataModule(size=20, channels=1, batch_size=16)
    assert datamodule.num_classes == 10 and datamodule.input_shape == (1, 20, 20)
    datamodule.setup()
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 1, 20, 20) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.long


def test_digits_three_channels_are_copies():
    datamodule = DigitsDataModule(channels=3)
    datamodule.setup()
    images, _ = datamodule.val_dataset.tensors
    assert images.shape[1:] == datamodule.input_shape == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])


def test_digits_split_is_a_stratified_partition(digits_labels):
    datamodule = DigitsDataModule(val_fraction=0.2)
    datamodule.setup()
    train, val = set(datamodule.train_indices.tolist()), set(datamodule.val_indices.tolist())
    assert not train & val and train | val == set(range(len(digits_labels)))
    assert len(val) == math.ceil(0.2 * len(digits_labels))
    val_labels = torch.as_tensor(digits_labels)[datamodule.val_indices]
    assert torch.equal(datamodule.val_dataset.tensors[1], val_labels)
    for digit in range(10):
        expected = 0.2 * (digits_labels == digit).sum()
        assert abs((val_labels == digit).sum().item() - expected) <= 1


def test_digits_are_seeded():
    first, again, other = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for datamodule in (first, again, other):
        datamodule.setup()
    assert torch.equal(first.val_indices, again.val_indices)
    assert not torch.equal(first.val_indices, other.val_indices)
    batch, batch_again = next(iter(first.train_dataloader())), next(iter(again.train_dataloader()))
    assert torch.equal(batch[0], batch_again[0]) and torch.equal(batch[1], batch_again[1])


def test_digits_train_shuffles_and_val_does_not():
    datamodule = DigitsDataModule(batch_size=32)
    datamodule.setup()
    train_labels = next(iter(datamodule.train_dataloader()))[1]
    assert not torch.equal(train_labels, datamodule.train_dataset.tensors[1][:32])
    val_labels = next(iter(datamodule.val_dataloader()))[1]
    assert torch.equal(val_labels, datamodule.val_dataset.tensors[1][:32])
    assert torch.equal(next(iter(datamodule.test_dataloader()))[1], val_labels)


def test_digits_values_lie_in_minus_one_to_one():
    datamodule = DigitsDataModule()
    datamodule.setup()
    images = torch.cat([datamodule.train_dataset.tensors[0], datamodule.val_dataset.tensors[0]])
    assert images.min().item() == -1.0  # blank background
    assert 0.9 < images.max().item() <= 1.0


# --------------------------------------------------------------------------------------------------------
# Pets on a tiny fixture
# --------------------------------------------------------------------------------------------------------

SIZE = 24


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory) -> Path:
    return make_pets_fixture(tmp_path_factory.mktemp("pets"))


def ready(root: Path, **kwargs) -> PetsDataModule:
    """A Pets data module on ``root``, set up, with the unreadable-file warning silenced."""
    datamodule = PetsDataModule(root=root, size=SIZE, download=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.setup()
    return datamodule


def labels_by_stem(datamodule: PetsDataModule) -> dict[str, int]:
    datasets = (datamodule.train_dataset, datamodule.val_dataset)
    return {path.stem: label for ds in datasets for path, label in zip(ds.files, ds.labels)}


def listed_stems(listing: Path) -> set[str]:
    return {line.split()[0] for line in listing.read_text().splitlines() if not line.startswith("#")}


def test_pets_num_classes_is_known_before_setup():
    assert PetsDataModule(task="binary").num_classes == 2
    assert PetsDataModule(task="breeds").num_classes == 37
    assert PetsDataModule(size=48).input_shape == (3, 48, 48)
    with pytest.raises(ValueError, match="task"):
        PetsDataModule(task="species")


def test_pets_binary_labels_cat_one_dog_zero(pets_root):
    labels = labels_by_stem(ready(pets_root, task="binary"))
    assert labels["Abyssinian_1"] == 1 and labels["Bengal_2"] == 1
    assert labels["beagle_1"] == 0 and labels["pug_3"] == 0


def test_pets_breed_labels_are_sorted_breed_names(pets_root):
    datamodule = ready(pets_root, task="breeds")
    assert datamodule.classes == ["Abyssinian", "Bengal", "beagle", "pug"]  # case-sensitive order
    labels = labels_by_stem(datamodule)
    assert labels["pug_1"] == datamodule.classes.index("pug") == 3
    assert labels["Abyssinian_2"] == 0 and labels["beagle_3"] == 2


def test_pets_unreadable_file_is_dropped_with_one_warning(pets_root):
    datamodule = PetsDataModule(root=pets_root, size=SIZE, download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamodule.setup()
    assert len(caught) == 1
    assert f"{UNREADABLE}.jpg" in str(caught[0].message)
    assert [path.name for path in datamodule.dropped_files] == [f"{UNREADABLE}.jpg"]
    assert UNREADABLE not in labels_by_stem(datamodule)


@pytest.mark.parametrize("stem", [GRAYSCALE, PNG_AS_JPG, CMYK])
def test_pets_awkward_files_load_as_rgb_tensors(pets_root, stem):
    datamodule = ready(pets_root)
    for dataset in (datamodule.train_dataset, datamodule.val_dataset):
        names = [path.stem for path in dataset.files]
        if stem in names:
            image, _ = dataset[names.index(stem)]
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            return
    pytest.fail(f"{stem} is in neither split")


def test_load_rgb_converts_palette_with_transparency(tmp_path):
    palette = Image.new("P", (6, 4), 1)
    palette.info["transparency"] = b"\x00\xff"
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_rgb(tmp_path / "palette.png")
    assert image.mode == "RGB" and image.size == (6, 4)


def test_pets_split_follows_the_official_lists(pets_root):
    datamodule = ready(pets_root)
    annotations = pets_root / "annotations"
    train = {path.stem for path in datamodule.train_dataset.files}
    val = {path.stem for path in datamodule.val_dataset.files}
    assert train == listed_stems(annotations / "trainval.txt") - {UNREADABLE}
    assert val == listed_stems(annotations / "test.txt")
    assert isinstance(datamodule.train_dataset.transform, TrainImageTransform)
    assert isinstance(datamodule.val_dataset.transform, EvalImageTransform)


def test_pets_split_is_seeded_random_without_lists(pets_root, tmp_path):
    root = shutil.copytree(pets_root, tmp_path / "pets")
    (root / "annotations" / "trainval.txt").unlink()
    (root / "annotations" / "test.txt").unlink()
    (root / "images" / f"{UNREADABLE}.jpg").unlink()
    all_stems = {path.stem for path in (root / "images").glob("*.jpg")}

    def split(seed: int) -> tuple[set[str], set[str]]:
        datamodule = ready(root, seed=seed, val_fraction=0.25)
        return (
            {path.stem for path in datamodule.train_dataset.files},
            {path.stem for path in datamodule.val_dataset.files},
        )

    train, val = split(seed=0)
    assert not train & val and train | val == all_stems
    assert len(val) == round(0.25 * len(all_stems))
    assert split(seed=0) == (train, val)
    assert split(seed=1) != (train, val)


def test_pets_loaders_give_batches(pets_root):
    datamodule = ready(pets_root, batch_size=4)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and labels.shape == (4,)
    images, _ = next(iter(datamodule.test_dataloader()))
    assert images.shape[1:] == datamodule.input_shape


# --------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_normalisation_uses_imagenet_statistics():
    colour = (200, 100, 50)
    tensor = to_normalized_tensor(Image.new("RGB", (5, 3), colour))
    assert tensor.shape == (3, 3, 5)
    for channel in range(3):
        expected = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(tensor[channel], torch.full((3, 5), expected), atol=1e-6)


@pytest.mark.parametrize("transform", [TrainImageTransform(SIZE), EvalImageTransform(SIZE)])
@pytest.mark.parametrize("image_size", [(40, 30), (30, 50), (8, 8)])
def test_transforms_output_size_and_normalisation(transform, image_size):
    colour = (10, 120, 250)
    output = transform(Image.new("RGB", image_size, colour))
    assert output.shape == (3, SIZE, SIZE)
    expected = to_normalized_tensor(Image.new("RGB", (SIZE, SIZE), colour))
    assert torch.allclose(output, expected, atol=1e-5)


def test_eval_transform_is_a_centre_crop():
    image = noise_image(30, 50)  # the short side already has the target size: no resampling
    expected = to_normalized_tensor(image.crop((0, 10, 30, 40)))
    assert torch.equal(EvalImageTransform(30)(image), expected)


def test_train_transform_is_seeded_by_torch():
    image, transform = noise_image(40, 30), TrainImageTransform(SIZE)
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    assert torch.equal(transform(image), first)
    assert not torch.equal(transform(image), first)


def test_train_transform_flips_half_of_the_time():
    image = noise_image(SIZE, SIZE)
    whole = TrainImageTransform(SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the whole image
    plain = to_normalized_tensor(image)
    mirrored = plain.flip(-1)
    outputs = [whole(image) for _ in range(40)]
    flipped = sum(torch.equal(output, mirrored) for output in outputs)
    assert flipped + sum(torch.equal(output, plain) for output in outputs) == len(outputs)
    assert 8 <= flipped <= 32


def test_random_resized_crop_respects_scale_and_ratio():
    transform = TrainImageTransform(SIZE, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3))
    width, height = 400, 300
    torch.manual_seed(0)
    areas = []
    for _ in range(300):
        top, left, crop_h, crop_w = transform.crop_box(width, height)
        assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
        assert 3 / 4 - 0.02 <= crop_w / crop_h <= 4 / 3 + 0.02
        areas.append(crop_w * crop_h / (width * height))
    assert 0.35 - 0.01 <= min(areas) < 0.45 and 0.9 < max(areas) <= 1.0


# --------------------------------------------------------------------------------------------------------
# Download from a local HTTP server, checksums, safe extraction, clear errors
# --------------------------------------------------------------------------------------------------------


class CountingHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pets_server(tmp_path_factory, pets_root):
    served = tmp_path_factory.mktemp("served")
    tarballs = pack_pets_tarballs(pets_root, served)
    md5s = {name: hashlib.md5(path.read_bytes()).hexdigest() for name, path in tarballs.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(served)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}", md5s
    server.shutdown()
    server.server_close()
    thread.join()


def test_prepare_data_downloads_and_extracts_once(pets_server, tmp_path):
    server, base_url, md5s = pets_server
    root = tmp_path / "pets"
    before = len(server.requests)
    datamodule = PetsDataModule(root=root, base_url=base_url, checksums=md5s, size=SIZE)
    datamodule.prepare_data()
    assert server.requests[before:] == ["/images.tar.gz", "/annotations.tar.gz"]
    assert (root / "images" / "Abyssinian_1.jpg").is_file() and (root / "images" / "pug_3.jpg").is_file()
    for listing in ("list.txt", "trainval.txt", "test.txt"):
        assert (root / "annotations" / listing).is_file()
    assert not [path for path in root.iterdir() if path.name.startswith(".")]  # no temporary leftovers

    datamodule.prepare_data()
    PetsDataModule(root=root, base_url=base_url, checksums=md5s).prepare_data()
    assert len(server.requests) == before + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.setup()
    assert len(datamodule.train_dataset) > 0 and len(datamodule.val_dataset) > 0


def test_wrong_checksum_raises_and_leaves_no_file(pets_server, tmp_path):
    _, base_url, md5s = pets_server
    root = tmp_path / "pets"
    datamodule = PetsDataModule(root=root, base_url=base_url, checksums={**md5s, "images.tar.gz": "0" * 32})
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        datamodule.prepare_data()
    assert list(root.iterdir()) == []


def test_failed_download_explains_what_to_do(pets_server, tmp_path):
    _, base_url, _ = pets_server
    datamodule = PetsDataModule(root=tmp_path / "pets", base_url=f"{base_url}/nowhere", checksums={})
    with pytest.raises(RuntimeError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert f"could not be downloaded from {base_url}/nowhere/images.tar.gz" in message
    assert str(tmp_path / "pets" / "images") in message and "trainval.txt" in message
    assert "data=digits" in message


def test_missing_files_without_download_explain_what_to_do(tmp_path):
    datamodule = PetsDataModule(root=tmp_path / "pets", download=False)
    with pytest.raises(RuntimeError, match="download=False.*data=digits"):
        datamodule.prepare_data()
    with pytest.raises(RuntimeError, match="data=digits"):
        datamodule.setup()


def tarball_with(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    path = tmp_path / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("images/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        else:
            tar.addfile(member)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "unsafe",
    [
        member("../evil"),
        member("images/../../evil"),
        member("/tmp/evil"),
        member("images/link", tarfile.SYMTYPE, "../../evil"),
        member("images/link", tarfile.SYMTYPE, "/etc/passwd"),
        member("images/hard", tarfile.LNKTYPE, "../evil"),
        member("images/device", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
def test_unsafe_members_are_rejected_before_extraction(tmp_path, unsafe):
    archive = tarball_with(tmp_path, unsafe)
    destination = tmp_path / "out"
    with pytest.raises(ValueError, match="refusing to extract"):
        extract_tarball(archive, destination)
    assert list(destination.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_link_chains_are_rejected(tmp_path):
    path = tmp_path / "chain.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(member("here", tarfile.SYMTYPE, "."))
        tar.addfile(member("here/up", tarfile.SYMTYPE, ".."))
    with pytest.raises(ValueError, match="link"):
        extract_tarball(path, tmp_path / "out")


def test_safe_archive_with_an_inner_symlink_extracts(tmp_path):
    archive = tarball_with(tmp_path, member("images/alias.txt", tarfile.SYMTYPE, "ok.txt"))
    created = extract_tarball(archive, tmp_path / "out")
    assert created == [tmp_path / "out" / "images"]
    assert (tmp_path / "out" / "images" / "alias.txt").read_text() == "ok"
