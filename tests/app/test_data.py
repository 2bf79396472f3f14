"""Digits, CIFAR-10 and Oxford-IIIT Pet data modules, their transforms, and safe extraction (no network:
downloads come from a local HTTP server)."""

from __future__ import annotations

import collections
import hashlib
import io
import math
import tarfile
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_cifar import class_images, make_cifar_archive, make_cifar_python_tarball
from fixtures_pets import CMYK, GRAYSCALE, PNG_AS_JPG, UNREADABLE, make_pets_fixture, pack_pets_tarballs
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import CIFAR10

import lightning_prune.app.data as data_module
from lightning_prune.app.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR10DataModule,
    DigitsDataModule,
    PetImages,
    PetsDataModule,
    cifar10_transform,
    extract_tarball,
    imagenet_transform,
    load_rgb,
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
# A local HTTP server standing in for the download sites
# --------------------------------------------------------------------------------------------------------


class CountingHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(served)))
    httpd.requests, httpd.folder = [], served
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# --------------------------------------------------------------------------------------------------------
# Pets on a tiny fixture, through torchvision's OxfordIIITPet
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
    labels = {}
    for subset in (datamodule.train_dataset, datamodule.val_dataset):
        for index in subset.indices:
            labels[subset.dataset.files[index].stem] = subset.dataset.targets[index]
    return labels


def stems(subset) -> set[str]:
    return {subset.dataset.files[index].stem for index in subset.indices}


def listed_stems(listing: Path) -> set[str]:
    return {line.split()[0] for line in listing.read_text().splitlines()}


def test_pets_num_classes_is_known_before_setup():
    assert PetsDataModule(task="binary").num_classes == 2
    assert PetsDataModule(task="breeds").num_classes == 37
    assert PetsDataModule(size=48).input_shape == (3, 48, 48)
    with pytest.raises(ValueError, match=r"task='species' is invalid; choose 'binary' or 'breeds'"):
        PetsDataModule(task="species")


def test_pets_binary_labels_are_torchvision_s_cat_zero_dog_one(pets_root):
    datamodule = ready(pets_root, task="binary")
    labels = labels_by_stem(datamodule)
    assert labels["Abyssinian_1"] == 0 and labels["Bengal_2"] == 0
    assert labels["beagle_1"] == 1 and labels["pug_3"] == 1
    assert datamodule.classes == ["Cat", "Dog"]


def test_pets_breed_labels_follow_the_class_id_column(pets_root):
    datamodule = ready(pets_root, task="breeds")
    labels = labels_by_stem(datamodule)
    # CLASS_ID - 1 of the fixture's breeds: Abyssinian 1, beagle 5, Bengal 6, pug 26
    assert (labels["Abyssinian_2"], labels["beagle_3"], labels["Bengal_1"], labels["pug_1"]) == (0, 4, 5, 25)
    assert datamodule.classes == ["Abyssinian", "Beagle", "Bengal", "Pug"]
    batch_labels = next(iter(datamodule.train_dataloader()))[1]
    assert int(batch_labels.max()) < datamodule.num_classes


def test_pets_unreadable_file_is_skipped_with_one_warning_from_the_data_module(pets_root):
    datamodule = PetsDataModule(root=pets_root, size=SIZE, download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamodule.setup()
    assert len(caught) == 1
    assert f"{UNREADABLE}.jpg" in str(caught[0].message)
    assert Path(caught[0].filename) == Path(data_module.__file__)  # our code, not Lightning's caller
    assert [path.name for path in datamodule.dropped_files] == [f"{UNREADABLE}.jpg"]
    assert UNREADABLE not in labels_by_stem(datamodule)
    for subset in (datamodule.train_dataset, datamodule.val_dataset):  # every kept image loads
        for index in range(len(subset)):
            subset[index]


@pytest.mark.parametrize("stem", [GRAYSCALE, PNG_AS_JPG, CMYK])
def test_pets_grayscale_png_and_cmyk_files_are_converted_not_dropped(pets_root, stem):
    datamodule = ready(pets_root)
    for subset in (datamodule.train_dataset, datamodule.val_dataset):
        names = [subset.dataset.files[index].stem for index in subset.indices]
        if stem in names:
            image, _ = subset[names.index(stem)]
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
    annotations = pets_root / "oxford-iiit-pet" / "annotations"
    assert stems(datamodule.train_dataset) == listed_stems(annotations / "trainval.txt") - {UNREADABLE}
    assert stems(datamodule.val_dataset) == listed_stems(annotations / "test.txt")


def test_pets_loaders_give_normalised_batches(pets_root):
    datamodule = ready(pets_root, batch_size=4)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and labels.shape == (4,)
    images, _ = next(iter(datamodule.test_dataloader()))
    assert images.shape[1:] == datamodule.input_shape
    assert images.min() < -1 and images.max() > 1  # ImageNet-normalised, not [0, 1]


@pytest.fixture
def pets_site(server, pets_root, monkeypatch):
    """The fixture's two archives on the local server, in place of torchvision's official URLs."""
    tarballs = pack_pets_tarballs(pets_root, server.folder / "pets")
    resources = tuple((f"{server.url}/pets/{name}", hashlib.md5(path.read_bytes()).hexdigest())
                      for name, path in tarballs.items())
    monkeypatch.setattr(PetImages, "_RESOURCES", resources)
    return server


def test_pets_prepare_data_downloads_extracts_and_checks_once(pets_site, tmp_path):
    root = tmp_path / "pets"
    before = len(pets_site.requests)
    datamodule = PetsDataModule(root=root, size=SIZE)
    datamodule.prepare_data()
    assert set(pets_site.requests[before:]) == {"/pets/images.tar.gz", "/pets/annotations.tar.gz"}
    assert (root / "oxford-iiit-pet" / "images" / "pug_3.jpg").is_file()
    after = len(pets_site.requests)
    datamodule.prepare_data()
    PetsDataModule(root=root).prepare_data()
    assert len(pets_site.requests) == after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.setup()
    assert len(datamodule.train_dataset) > 0 and len(datamodule.val_dataset) > 0


def test_pets_wrong_checksum_is_refused(pets_site, tmp_path, monkeypatch):
    (url, _), second = PetImages._RESOURCES
    monkeypatch.setattr(PetImages, "_RESOURCES", ((url, "0" * 32), second))
    with pytest.raises(FileNotFoundError, match=r"could not be downloaded \(File not found or corrupted"):
        PetsDataModule(root=tmp_path / "pets").prepare_data()
    assert not (tmp_path / "pets" / "oxford-iiit-pet" / "images").exists()


def test_pets_failed_download_explains_what_to_do(pets_site, tmp_path, monkeypatch):
    monkeypatch.setattr(PetImages, "_RESOURCES", ((f"{pets_site.url}/nowhere/images.tar.gz", None),))
    with pytest.raises(FileNotFoundError) as error:
        PetsDataModule(root=tmp_path / "pets").prepare_data()
    message = str(error.value)
    assert "could not be downloaded" in message and "404" in message
    assert str(tmp_path / "pets" / "oxford-iiit-pet" / "images") in message and "trainval.txt" in message
    assert "data=digits" in message


def test_pets_missing_files_without_download_explain_what_to_do(tmp_path):
    datamodule = PetsDataModule(root=tmp_path / "pets", download=False)
    for step in (datamodule.prepare_data, datamodule.setup):
        with pytest.raises(FileNotFoundError, match=r"no images/ and annotations/ in .*oxford-iiit-pet.*data=digits"):
            step()


# --------------------------------------------------------------------------------------------------------
# Transforms (torchvision.transforms.v2)
# --------------------------------------------------------------------------------------------------------


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def normalised(pixels: np.ndarray, mean, std) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("image_size", [(40, 30), (30, 50), (8, 8)])
def test_imagenet_transforms_give_size_and_imagenet_normalisation(train, image_size):
    colour = (10, 120, 250)
    output = imagenet_transform(SIZE, train)(Image.new("RGB", image_size, colour))
    expected = normalised(np.full((SIZE, SIZE, 3), colour, dtype=np.uint8), IMAGENET_MEAN, IMAGENET_STD)
    assert output.shape == (3, SIZE, SIZE) and torch.allclose(output, expected, atol=1e-5)


def test_imagenet_eval_transform_is_a_centre_crop():
    image = noise_image(30, 50)  # the short side already has the target size: no resampling
    expected = normalised(np.asarray(image)[10:40], IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(imagenet_transform(30, train=False)(image), expected, atol=1e-6)


def test_cifar_eval_transform_only_normalises():
    image = noise_image(32, 32)
    expected = normalised(np.asarray(image), CIFAR10_MEAN, CIFAR10_STD)
    assert torch.allclose(cifar10_transform(train=False)(image), expected, atol=1e-6)


def test_cifar_train_transform_is_a_padded_crop_and_a_flip_seeded_by_torch():
    image = noise_image(32, 32)
    padded = torch.nn.functional.pad(torch.from_numpy(np.array(image)).permute(2, 0, 1), (4, 4, 4, 4))
    transform = cifar10_transform(train=True)
    torch.manual_seed(0)
    seen = collections.Counter()
    for _ in range(40):
        output = transform(image)
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.allclose(output, normalised(
                       (padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip else padded[:, dy:dy + 32, dx:dx + 32])
                       .permute(1, 2, 0).numpy(), CIFAR10_MEAN, CIFAR10_STD), atol=1e-5)]
        assert len(matches) == 1  # a 32x32 window of the image padded by 4 with zeros, maybe mirrored
        seen[matches[0][2]] += 1
        seen["shifted"] += matches[0][:2] != (4, 4)
    assert 8 <= seen[True] <= 32 and seen["shifted"] > 30
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    assert torch.equal(transform(image), first)


# --------------------------------------------------------------------------------------------------------
# CIFAR-10: a generated archive in the shared archive's layout, and torchvision's release from the server
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> Path:
    return make_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar10-jpg.tar.gz", n_train=4, n_test=2)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, cifar_archive) -> Path:
    root = tmp_path_factory.mktemp("cifar_root") / "cifar10"
    CIFAR10DataModule(root=root, archive=cifar_archive).prepare_data()
    return root


def cifar_ready(root: Path, **kwargs) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(root=root, download=False, **kwargs)
    datamodule.setup()
    return datamodule


def labels_of(dataset) -> list[int]:
    if isinstance(dataset, torch.utils.data.Subset):
        return [dataset.dataset.targets[i] for i in dataset.indices]
    return list(dataset.targets)


def test_cifar_archive_is_extracted_once_into_root(tmp_path, cifar_archive, monkeypatch):
    root = tmp_path / "cifar10"
    datamodule = CIFAR10DataModule(root=root, archive=cifar_archive, download=False)
    datamodule.prepare_data()
    assert sorted(p.name for p in (root / "train").iterdir()) == list(CIFAR10_CLASSES)
    assert len(list((root / "test" / "ship").glob("*.jpg"))) == 2
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]  # no temporary leftovers
    calls = []
    monkeypatch.setattr(data_module, "extract_tarball", lambda *args: calls.append(args))
    CIFAR10DataModule(root=root, archive=cifar_archive).prepare_data()
    assert calls == []


def test_cifar_batches_are_normalised_32x32_with_labels_from_the_class_folders(cifar_root):
    datamodule = cifar_ready(cifar_root, batch_size=8)
    assert (datamodule.num_classes, datamodule.input_shape) == (10, (3, 32, 32))
    assert len(datamodule.train_dataset) == 40 and len(datamodule.val_dataset) == 20
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    # val is unshuffled: the first images are the airplanes, then the automobiles
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    truck = np.asarray(Image.open(sorted((cifar_root / "test" / "truck").glob("*.jpg"))[0]))
    assert torch.allclose(datamodule.val_dataset[18][0], normalised(truck, CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    assert abs(float(truck.mean()) - float(class_images(9, 1, seed=0).mean())) < 8  # the truck colour


def test_cifar_train_subset_is_class_balanced_and_seeded(cifar_root):
    datamodule = cifar_ready(cifar_root, train_subset=20, val_subset=10)
    counts = collections.Counter(labels_of(datamodule.train_dataset))
    assert sorted(counts) == list(range(10)) and set(counts.values()) == {2}
    assert collections.Counter(labels_of(datamodule.val_dataset)) == {label: 1 for label in range(10)}
    again = cifar_ready(cifar_root, train_subset=20, val_subset=10)
    other = cifar_ready(cifar_root, train_subset=20, seed=1)
    assert datamodule.train_dataset.indices == again.train_dataset.indices
    assert datamodule.train_dataset.indices != other.train_dataset.indices
    uneven = collections.Counter(labels_of(cifar_ready(cifar_root, train_subset=23).train_dataset))
    assert sum(uneven.values()) == 23 and sorted(collections.Counter(uneven.values()).items()) == [(2, 7), (3, 3)]


@pytest.mark.parametrize(("key", "limit"), [("train_subset", 50_000), ("val_subset", 10_000)])
@pytest.mark.parametrize("size", [0, 5, -10, "over", "many", True])
def test_cifar_bad_subset_sizes_are_refused_naming_the_value_and_the_range(key, limit, size):
    size = limit + 1 if size == "over" else size
    with pytest.raises(ValueError, match=rf"{key}={size!r} is invalid; it must be null .* \[10, {limit}\]"):
        CIFAR10DataModule(**{key: size})


def test_a_subset_larger_than_the_local_copy_is_refused(cifar_root):
    with pytest.raises(ValueError, match=r"train_subset=50 is invalid: class \d has only 4 images; .* at most 40"):
        cifar_ready(cifar_root, train_subset=50)


def test_missing_cifar_data_names_every_place_it_looked(tmp_path):
    root, archive = tmp_path / "nowhere", tmp_path / "no.tar.gz"
    with pytest.raises(FileNotFoundError) as error:
        CIFAR10DataModule(root=root, archive=archive, download=False)
    message = str(error.value)
    assert f"{root}/train" in message and f"{root}/cifar-10-batches-py" in message
    assert f"{str(archive)!r} (not found)" in message and "data.download=true" in message


def test_an_archive_in_another_layout_is_refused(tmp_path):
    archive = make_cifar_archive(tmp_path / "nested.tar.gz", n_train=1, n_test=1, prefix="cifar10/")
    with pytest.raises(ValueError, match=r"nested.tar.gz' does not hold train/<class>/\*.jpg"):
        CIFAR10DataModule(root=tmp_path / "out", archive=archive).prepare_data()


def test_class_folders_must_be_cifar10_s(tmp_path):
    classes = ("cat", "dog", *CIFAR10_CLASSES[:3], "bike", *CIFAR10_CLASSES[6:])
    archive = make_cifar_archive(tmp_path / "other.tar.gz", n_train=1, n_test=1, classes=classes)
    datamodule = CIFAR10DataModule(root=tmp_path / "out", archive=archive)
    datamodule.prepare_data()
    with pytest.raises(ValueError, match=r"the class folders of .*train are \['airplane', .*'bike'.*CIFAR-10's are"):
        datamodule.setup()


@pytest.fixture
def cifar_site(server, monkeypatch):
    """torchvision's CIFAR-10 release, in miniature, on the local server in place of the official URL."""
    tarball, md5s = make_cifar_python_tarball(server.folder / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "url", f"{server.url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(tarball.read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})
    return server


def test_without_a_local_copy_torchvision_downloads_cifar10(cifar_site, tmp_path):
    root = tmp_path / "cifar10"
    datamodule = CIFAR10DataModule(root=root, archive=tmp_path / "absent.tar.gz", train_subset=30)
    datamodule.prepare_data()
    assert cifar_site.requests[-1] == "/cifar-10-python.tar.gz" and (root / "cifar-10-batches-py").is_dir()
    datamodule.setup()
    assert len(datamodule.val_dataset) == 10
    assert collections.Counter(labels_of(datamodule.train_dataset)) == {label: 3 for label in range(10)}
    images, labels = next(iter(datamodule.val_dataloader()))
    expected = normalised(class_images(int(labels[4]), 1, seed=9 * 100 + int(labels[4]))[0], CIFAR10_MEAN, CIFAR10_STD)
    assert images.shape == (10, 3, 32, 32) and torch.allclose(images[4], expected, atol=1e-6)


def test_a_failed_cifar_download_says_what_to_do(server, tmp_path, monkeypatch):
    monkeypatch.setattr(CIFAR10, "url", f"{server.url}/nowhere/cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"could not be downloaded from .*nowhere.*data.archive"):
        CIFAR10DataModule(root=tmp_path / "cifar10").prepare_data()


# --------------------------------------------------------------------------------------------------------
# Safe extraction of local archives
# --------------------------------------------------------------------------------------------------------


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
