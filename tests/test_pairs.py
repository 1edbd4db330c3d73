"""Paired-folder layouts, their detection and their error messages (tiny synthetic PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import DatasetError
from datasets.pairs import FolderPairs, Pair, detect_layout, find_pairs, load_pair
from datasets.images import read_image

W, H = 8, 6


def img(path: Path, value: int = 0, size=(W, H), mode: str = "RGB", fmt: str | None = None):
    """Write a tiny image whose pixels encode ``value`` (so pairs can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[0, 0] = (value % 256, 7, 9)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


def names(pairs):
    return [p.name for p in pairs]


# --------------------------------------------------------------------------- layouts

def test_prenet_layout(tmp_path):
    for n in (10, 2, 1):
        img(tmp_path / f"norain-{n:03d}.png", n)
        img(tmp_path / "rainy" / f"rain-{n:03d}.png", 100 + n)
    assert detect_layout(tmp_path) == "prenet"
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["001", "002", "010"]
    assert pairs[1] == Pair("002", tmp_path / "rainy" / "rain-002.png", tmp_path / "norain-002.png")


def test_prenet_unpadded_numbers_sort_naturally(tmp_path):
    for n in (10, 2, 1):
        img(tmp_path / f"norain-{n}.png", n)
        img(tmp_path / "rainy" / f"rain-{n}.png", n)
    assert names(find_pairs(tmp_path)) == ["1", "2", "10"]


@pytest.mark.parametrize("rainy_fmt, clean_fmt", [
    ("rain-{:03d}.png", "norain-{:03d}.png"),
    ("rainy-{}.png", "norain-{}.png"),
    ("{}_rain.png", "{}_norain.png"),
    ("{}_in.png", "{}_GT.png"),          # Rain12 as Li et al. ship it
    ("rain-{}.PNG", "norain-{:03d}.JPG"),  # numbers compare as integers; extensions any case
])
def test_flat_layout(tmp_path, rainy_fmt, clean_fmt):
    for n in (10, 2, 1):
        img(tmp_path / rainy_fmt.format(n), n, fmt="PNG")
        img(tmp_path / clean_fmt.format(n), n, fmt="PNG" if clean_fmt.endswith("png") else "JPEG")
    assert detect_layout(tmp_path) == "flat"
    pairs = find_pairs(tmp_path)
    assert [int(x) for x in names(pairs)] == [1, 2, 10]
    for p in pairs:
        assert p.rainy.name == rainy_fmt.format(int(p.name))
        assert p.clean.name == clean_fmt.format(int(p.name))


def test_flat_ignores_hidden_non_image_and_aux_files(tmp_path):
    for n in (1, 2):
        img(tmp_path / f"rain-{n}.png", n)
        img(tmp_path / f"norain-{n}.png", n)
        img(tmp_path / f"rainstreak-{n}.png", n)   # JORDER side product
    (tmp_path / ".DS_Store").write_bytes(b"\0\1garbage")
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "._rain-1.png").write_bytes(b"not a png")   # macOS resource fork
    assert names(find_pairs(tmp_path)) == ["1", "2"]


@pytest.mark.parametrize("rdir, cdir", [("rainy", "clean"), ("Input", "GT"), ("rain", "norain"),
                                        ("data", "ground_truth"), ("rain_image", "no_rain")])
def test_subfolders_same_stem(tmp_path, rdir, cdir):
    for n in (10, 2, 1):
        img(tmp_path / rdir / f"{n}.png", n)
        img(tmp_path / cdir / f"{n}.png", 50 + n)
    assert detect_layout(tmp_path) == "subfolders"
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["1", "2", "10"]
    assert all(p.rainy.parent.name == rdir and p.clean.parent.name == cdir for p in pairs)
    assert all(p.rainy.name == p.clean.name for p in pairs)


def test_subfolders_same_prefixed_stem(tmp_path):
    for n in (3, 4):
        img(tmp_path / "rainy" / f"norain-{n}.png", n)
        img(tmp_path / "norain" / f"norain-{n}.png", n)
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["norain-3", "norain-4"]
    assert pairs[0].clean == tmp_path / "norain" / "norain-3.png"


def test_subfolders_by_number(tmp_path):
    for n in (10, 2, 1):
        img(tmp_path / "rain" / f"rain-{n}.png", n)
        img(tmp_path / "target" / f"norain-{n:03d}.png", n)
    assert detect_layout(tmp_path) == "subfolders"
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["1", "2", "10"]
    assert pairs[2].clean.name == "norain-010.png"


def test_subfolders_scale_folder(tmp_path):
    # JORDER's 200-image release: rain/X2/norain-1x2.png <-> norain/norain-1.png
    for n in (1, 2, 10):
        img(tmp_path / "rain" / "X2" / f"norain-{n}x2.png", n)
        img(tmp_path / "norain" / f"norain-{n}.png", n)
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["1", "2", "10"]
    assert pairs[0].rainy == tmp_path / "rain" / "X2" / "norain-1x2.png"


def test_rain1400_layout(tmp_path):
    for k in (1, 2, 10):
        img(tmp_path / "rainy_image" / f"901_{k}.jpg", k, fmt="JPEG")
    img(tmp_path / "rainy_image" / "902_1.jpg", 5, fmt="JPEG")
    for cid in (901, 902, 903):   # a clean image without rainy versions is fine here
        img(tmp_path / "ground_truth" / f"{cid}.jpg", cid, fmt="JPEG")
    assert detect_layout(tmp_path) == "rain1400"
    pairs = find_pairs(tmp_path)
    assert names(pairs) == ["901_1", "901_2", "901_10", "902_1"]
    assert {p.clean.name for p in pairs[:3]} == {"901.jpg"}
    assert pairs[3].clean.name == "902.jpg"


# --------------------------------------------------------------------------- errors

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    with pytest.raises(DatasetError, match="nope"):
        FolderPairs(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no images") as err:
        find_pairs(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_with_only_non_images(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "README.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        detect_layout(tmp_path)


def test_empty_rainy_subfolder(tmp_path):
    (tmp_path / "rainy").mkdir()
    img(tmp_path / "clean" / "1.png")
    with pytest.raises(DatasetError, match="rainy folder .*rainy contains no images"):
        find_pairs(tmp_path)


def test_unclassifiable_images(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="a.png"):
        detect_layout(tmp_path)


def test_flat_stray_image_is_named(tmp_path):
    img(tmp_path / "rain-1.png")
    img(tmp_path / "norain-1.png")
    img(tmp_path / "preview.png")
    with pytest.raises(DatasetError, match="preview.png"):
        find_pairs(tmp_path)


def test_only_rainy_images(tmp_path):
    img(tmp_path / "rain-1.png")
    with pytest.raises(DatasetError, match="no clean images"):
        detect_layout(tmp_path)


@pytest.mark.parametrize("layout", ["prenet", "flat", "subfolders"])
def test_missing_clean_partner(tmp_path, layout):
    rainy_dir = {"prenet": tmp_path / "rainy", "flat": tmp_path,
                 "subfolders": tmp_path / "rainy"}[layout]
    clean_dir = {"prenet": tmp_path, "flat": tmp_path, "subfolders": tmp_path / "clean"}[layout]
    for n in (1, 2, 3):
        img(rainy_dir / f"rain-{n}.png", n)
    for n in (1, 2):
        img(clean_dir / f"norain-{n}.png", n)
    with pytest.raises(DatasetError, match="no clean partner") as err:
        find_pairs(tmp_path)
    assert "rain-3.png" in str(err.value)


@pytest.mark.parametrize("layout", ["prenet", "flat", "subfolders"])
def test_missing_rainy_partner(tmp_path, layout):
    rainy_dir = tmp_path if layout == "flat" else tmp_path / "rainy"
    clean_dir = tmp_path / "clean" if layout == "subfolders" else tmp_path
    for n in (1, 2):
        img(rainy_dir / f"rain-{n}.png", n)
    for n in (1, 2, 7):
        img(clean_dir / f"norain-{n}.png", n)
    with pytest.raises(DatasetError, match="no rainy partner") as err:
        find_pairs(tmp_path)
    assert "norain-7.png" in str(err.value)


def test_subfolders_same_stem_missing_partner(tmp_path):
    for n in (1, 2, 3):
        img(tmp_path / "rainy" / f"{n}.png", n)
    for n in (1, 2):
        img(tmp_path / "clean" / f"{n}.png", n)
    with pytest.raises(DatasetError, match=r"3\.png.*no clean partner"):
        find_pairs(tmp_path)


def test_rain1400_missing_clean(tmp_path):
    img(tmp_path / "rainy_image" / "901_1.jpg", fmt="JPEG")
    img(tmp_path / "rainy_image" / "902_1.jpg", fmt="JPEG")
    img(tmp_path / "ground_truth" / "901.jpg", fmt="JPEG")
    with pytest.raises(DatasetError, match=r"902_1\.jpg.*no clean partner"):
        find_pairs(tmp_path)


def test_duplicate_number(tmp_path):
    img(tmp_path / "rain-1.png")
    img(tmp_path / "rain-001.png")
    img(tmp_path / "norain-1.png")
    with pytest.raises(DatasetError, match="same number") as err:
        find_pairs(tmp_path)
    assert "rain-1.png" in str(err.value) and "rain-001.png" in str(err.value)


def test_mismatched_sizes(tmp_path):
    img(tmp_path / "rain-1.png", size=(W, H))
    img(tmp_path / "norain-1.png", size=(W + 1, H))
    with pytest.raises(DatasetError, match="size mismatch") as err:
        find_pairs(tmp_path)
    msg = str(err.value)
    assert "rain-1.png" in msg and "norain-1.png" in msg
    assert f"{W}x{H}" in msg and f"{W + 1}x{H}" in msg


def test_undecodable_file(tmp_path):
    img(tmp_path / "rain-1.png")
    img(tmp_path / "norain-1.png")
    (tmp_path / "rain-2.png").write_bytes(b"this is not a png at all" * 4)
    img(tmp_path / "norain-2.png")
    with pytest.raises(DatasetError, match="rain-2.png"):
        find_pairs(tmp_path)
    with pytest.raises(DatasetError, match="rain-2.png"):
        read_image(tmp_path / "rain-2.png")


def test_truncated_file_fails_on_decode(tmp_path):
    img(tmp_path / "rain-1.png", size=(64, 48))
    img(tmp_path / "norain-1.png", size=(64, 48))
    data = (tmp_path / "rain-1.png").read_bytes()
    (tmp_path / "rain-1.png").write_bytes(data[: len(data) // 2])
    ds = FolderPairs(tmp_path)          # header is intact: scanning passes
    with pytest.raises(DatasetError, match="rain-1.png"):
        list(ds)


def test_load_pair_shape_mismatch(tmp_path):
    a = img(tmp_path / "a.png", size=(W, H))
    b = img(tmp_path / "b.png", size=(W, H + 2))
    with pytest.raises(DatasetError, match="size mismatch") as err:
        load_pair(Pair("x", a, b))
    assert "a.png" in str(err.value) and "b.png" in str(err.value)


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = img(tmp_path / f"x.{fmt.lower()}", 3, mode=mode, fmt=fmt)
    arr = read_image(path)
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    if mode in ("L", "LA", "1"):
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_read_image_16bit(tmp_path):
    wide = (np.arange(W * H, dtype=np.uint16).reshape(H, W) * 1000)
    path = tmp_path / "g16.png"
    Image.fromarray(wide).save(path)
    arr = read_image(path)
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == round(wide[-1, -1] / 257)


def test_read_image_rgb_values(tmp_path):
    src = np.arange(W * H * 3, dtype=np.uint8).reshape(H, W, 3)
    Image.fromarray(src).save(tmp_path / "x.png")
    assert np.array_equal(read_image(tmp_path / "x.png"), src)


def test_read_image_missing(tmp_path):
    with pytest.raises(DatasetError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")


# --------------------------------------------------------------------------- FolderPairs

def test_folderpairs_iteration_and_limit(tmp_path):
    root = tmp_path / "MySet"
    for n in (1, 2, 10):
        img(root / f"norain-{n}.png", n)
        img(root / "rainy" / f"rain-{n}.png", 100 + n)
    ds = FolderPairs(root)
    assert ds.name == "MySet" and ds.root == root and len(ds) == 3
    items = list(ds)
    assert [n for n, _, _ in items] == ["1", "2", "10"]
    for n, rainy, clean in items:
        assert rainy.shape == clean.shape == (H, W, 3)
        assert rainy.dtype == clean.dtype == np.uint8
        assert rainy[0, 0, 0] == 100 + int(n) and clean[0, 0, 0] == int(n)

    small = FolderPairs(root, name="custom", limit=2)
    assert small.name == "custom" and len(small) == 2
    assert [n for n, _, _ in small] == ["1", "2"]
    info = small.describe()
    assert info["name"] == "custom" and info["n_images"] == 2
    assert info["layout"] == "prenet" and info["limit"] == 2
    assert info["known"] is False and len(info["fingerprint"]) == 64
    assert info["n_files"] == 6   # identified from every pair in the folder

    with pytest.raises(ValueError):
        FolderPairs(root, limit=0)


def test_folderpairs_reports_errors_at_construction(tmp_path):
    img(tmp_path / "rain-1.png")
    with pytest.raises(DatasetError):
        FolderPairs(tmp_path)


def test_flat_wins_over_unrelated_data_folder(tmp_path):
    for n in (1, 2):
        img(tmp_path / f"rain-{n}.png", n)
        img(tmp_path / f"norain-{n}.png", n)
    img(tmp_path / "data" / "something.png")
    assert detect_layout(tmp_path) == "flat"
    assert names(find_pairs(tmp_path)) == ["1", "2"]
