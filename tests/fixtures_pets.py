"""A tiny Oxford-IIIT Pet look-alike: the official folder layout, file naming and annotation format, in
torchvision's place for it (``ROOT/oxford-iiit-pet/``).

Four breeds (two cat breeds, capitalised, and two dog breeds, lower-case, as in the real data set), plus the
kinds of awkward files the real ``images.tar.gz`` holds: a grayscale JPEG, PNG data under a ``.jpg`` name, a
CMYK JPEG and an unreadable file.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# breed -> (official CLASS_ID, SPECIES 1 = cat / 2 = dog, BREED_ID within the species)
BREEDS = {
    "Abyssinian": (1, 1, 1),
    "Bengal": (6, 1, 2),
    "beagle": (5, 2, 4),
    "pug": (26, 2, 18),
}
GRAYSCALE = "Abyssinian_50"
PNG_AS_JPG = "beagle_50"
CMYK = "pug_50"
UNREADABLE = "Bengal_99"

_LIST_HEADER = """\
#Image CLASS-ID SPECIES BREED ID
#ID: 1:37 Class ids
#SPECIES: 1:Cat 2:Dog
#BREED ID: 1-12:Cat 1-25:Dog
#All images with 1st letter as captial are cat images
#images with small first letter are dog images
"""


def _random_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random base colour plus noise, ``size`` = (width, height)."""
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-40, 41, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def make_pets_fixture(root: Path, n_per_breed: int = 3) -> Path:
    """Write ``root/oxford-iiit-pet/images/*.jpg`` and ``.../annotations/{list,trainval,test}.txt``; returns
    ``root``, the data module's ``root``.

    Each breed gets ``n_per_breed`` ordinary JPEGs (alternately 40x30 and 30x50); the last of them goes to
    ``test.txt``, the others to ``trainval.txt``. The awkward files are listed in ``trainval.txt``, except the
    grayscale one, which is in ``test.txt``.
    """
    rng = np.random.default_rng(0)
    images, annotations = root / "oxford-iiit-pet" / "images", root / "oxford-iiit-pet" / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    trainval: list[str] = []
    test: list[str] = []
    for breed in BREEDS:
        for index in range(1, n_per_breed + 1):
            stem = f"{breed}_{index}"
            _random_image(rng, (40, 30) if index % 2 else (30, 50)).save(images / f"{stem}.jpg", "JPEG")
            (test if index == n_per_breed else trainval).append(stem)

    _random_image(rng, (40, 30)).convert("L").save(images / f"{GRAYSCALE}.jpg", "JPEG")
    _random_image(rng, (30, 40)).save(images / f"{PNG_AS_JPG}.jpg", "PNG")
    _random_image(rng, (40, 40)).convert("CMYK").save(images / f"{CMYK}.jpg", "JPEG")
    (images / f"{UNREADABLE}.jpg").write_bytes(rng.integers(0, 256, size=500, dtype=np.uint8).tobytes())
    trainval += [PNG_AS_JPG, CMYK, UNREADABLE]
    test.append(GRAYSCALE)

    def line(stem: str) -> str:
        class_id, species, breed_id = BREEDS[stem.rsplit("_", 1)[0]]
        return f"{stem} {class_id} {species} {breed_id}\n"

    (annotations / "list.txt").write_text(_LIST_HEADER + "".join(line(s) for s in sorted(trainval + test)))
    (annotations / "trainval.txt").write_text("".join(line(s) for s in trainval))
    (annotations / "test.txt").write_text("".join(line(s) for s in test))
    return root


def pack_pets_tarballs(fixture: Path, out_dir: Path) -> dict[str, Path]:
    """Pack the fixture's ``images`` and ``annotations`` as ``images.tar.gz`` and ``annotations.tar.gz`` in
    ``out_dir``, with top-level folders ``images/`` and ``annotations/`` like the official archives.
    """
    fixture = fixture / "oxford-iiit-pet"
    out_dir.mkdir(parents=True, exist_ok=True)
    tarballs = {}
    for part in ("images", "annotations"):
        path = out_dir / f"{part}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(fixture / part, arcname=part)
        tarballs[path.name] = path
    return tarballs
