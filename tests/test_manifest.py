"""Release fingerprints, identification and dataset-name resolution."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import manifest as manifest_mod
from datasets.manifest import KNOWN_RELEASES, identify, manifest, sha256_file
from datasets.names import REGISTERED, canonical_name, resolve_dataset
from core.errors import DatasetError
from datasets.pairs import FolderPairs, Pair, find_pairs


def png(path: Path, value: int = 0, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def prenet_folder(root: Path, n: int) -> Path:
    for i in range(1, n + 1):
        png(root / f"norain-{i:03d}.png", i)
        png(root / "rainy" / f"rain-{i:03d}.png", i + 1)
    return root


def raw_pairs(root: Path, n: int) -> list[Pair]:
    """n pairs of small raw files: identify() hashes bytes, it never decodes."""
    (root / "rainy").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(1, n + 1):
        r, c = root / "rainy" / f"rain-{i:03d}.png", root / f"norain-{i:03d}.png"
        r.write_bytes(b"r%d" % i)
        c.write_bytes(b"c%d" % i)
        pairs.append(Pair(f"{i:03d}", r, c))
    return pairs


# --------------------------------------------------------------------------- manifest

def test_sha256_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello rain")
    assert sha256_file(f) == hashlib.sha256(b"hello rain").hexdigest()


def test_manifest_stable_and_sensitive(tmp_path):
    a = prenet_folder(tmp_path / "a", 3)
    b = prenet_folder(tmp_path / "elsewhere" / "b", 3)
    files_a = [p for pr in find_pairs(a) for p in (pr.rainy, pr.clean)]
    files_b = [p for pr in find_pairs(b) for p in (pr.rainy, pr.clean)]

    m1 = manifest(a, files_a)
    m2 = manifest(a, list(reversed(files_a)) + files_a[:2])   # order and repeats do not matter
    m3 = manifest(b, files_b)                                   # location does not matter
    assert m1["n_files"] == 6 and len(m1["files"]) == 6
    assert "rainy/rain-001.png" in m1["files"] and "norain-003.png" in m1["files"]
    assert re.fullmatch(r"[0-9a-f]{64}", m1["fingerprint"])
    assert m1 == m2 and m1["fingerprint"] == m3["fingerprint"]

    target = a / "rainy" / "rain-002.png"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    m4 = manifest(a, files_a)
    assert m4["fingerprint"] != m1["fingerprint"]
    changed = [k for k in m1["files"] if m1["files"][k] != m4["files"][k]]
    assert changed == ["rainy/rain-002.png"]


def test_manifest_renamed_file_changes_fingerprint(tmp_path):
    (tmp_path / "a.png").write_bytes(b"same")
    (tmp_path / "b.png").write_bytes(b"same")
    assert (manifest(tmp_path, [tmp_path / "a.png"])["fingerprint"]
            != manifest(tmp_path, [tmp_path / "b.png"])["fingerprint"])


def test_manifest_rejects_file_outside_root(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DatasetError, match="not inside"):
        manifest(tmp_path / "sub", [tmp_path / "x.png"])


def test_known_releases_registered():
    entry = KNOWN_RELEASES["8ff655e782a6a6524b575963e7d9b5e825a63af7d08451b6d712aa8bf6d0d74c"]
    assert entry["name"] == "Rain100L" and entry["version"] == "old-100"
    assert entry["n_pairs"] == 100 and "PReNet" in entry["source"]
    for fp, rel in KNOWN_RELEASES.items():
        assert re.fullmatch(r"[0-9a-f]{64}", fp)
        assert set(rel) >= {"name", "version", "n_pairs", "source"}


# --------------------------------------------------------------------------- identify

def test_identify_unknown_folder(tmp_path):
    root = prenet_folder(tmp_path / "whatever", 2)
    info = identify(root, find_pairs(root))
    assert info["known"] is False and info["release"] is None
    assert info["version"] == "unknown" and info["source"] is None
    assert info["n_files"] == 4 and re.fullmatch(r"[0-9a-f]{64}", info["fingerprint"])
    assert isinstance(info["note"], str)


def test_identify_rain100l_named_unverified(tmp_path):
    root = prenet_folder(tmp_path / "rain100L", 3)
    info = identify(root, find_pairs(root))
    assert info["known"] is False
    assert info["release"] == "Rain100L"
    assert info["version"] == "unknown"
    assert "unverified" in info["note"]


@pytest.mark.parametrize("folder, n, version", [("Rain100H", 100, "old-100"),
                                                ("RAIN100L", 200, "new-200"),
                                                ("rain_data_test_Light", 200, "new-200")])
def test_identify_version_guessed_from_count(tmp_path, folder, n, version):
    root = tmp_path / folder
    info = identify(root, raw_pairs(root, n))
    assert info["known"] is False and info["version"] == version
    assert "unverified: hashes do not match a known release" in info["note"]


def test_identify_known_release(tmp_path, monkeypatch):
    root = prenet_folder(tmp_path / "anything", 2)
    pairs = find_pairs(root)
    fp = identify(root, pairs)["fingerprint"]
    monkeypatch.setitem(KNOWN_RELEASES, fp, {"name": "Toy", "version": "v1", "n_pairs": 2,
                                             "source": "unit test"})
    info = identify(root, pairs)
    assert info["known"] is True and info["release"] == "Toy"
    assert info["version"] == "v1" and info["source"] == "unit test"
    assert FolderPairs(root).describe()["known"] is True
    assert manifest_mod.KNOWN_RELEASES is KNOWN_RELEASES


def test_rain1400_shared_clean_hashed_once(tmp_path):
    root = tmp_path / "r1400"
    for k in (1, 2, 3):
        png(root / "rainy_image" / f"901_{k}.png", k)
    png(root / "ground_truth" / "901.png")
    assert identify(root, find_pairs(root))["n_files"] == 4


# --------------------------------------------------------------------------- names

def test_canonical_name():
    assert canonical_name("RAIN100L") == "Rain100L"
    assert canonical_name("rain_data_test_Heavy") == "Rain100H"
    assert canonical_name("bsd68") is None
    assert set(REGISTERED.values()) == {"Rain100L", "Rain100H", "Rain12", "Rain1400"}


def test_resolve_existing_path(tmp_path):
    d = tmp_path / "my_rain_set"
    d.mkdir()
    assert resolve_dataset(str(d), None) == ("my_rain_set", d)


def test_resolve_registered_name(tmp_path):
    (tmp_path / "Rain100L").mkdir()
    (tmp_path / "other" / "test" / "rain100h").mkdir(parents=True)   # depth 3
    assert resolve_dataset("rain100l", tmp_path) == ("Rain100L", tmp_path / "Rain100L")
    assert resolve_dataset("Rain100H", tmp_path) == (
        "Rain100H", tmp_path / "other" / "test" / "rain100h")


def test_resolve_prefers_canonical_then_shallowest(tmp_path):
    (tmp_path / "rain_data_test_Light").mkdir()
    (tmp_path / "test" / "Rain100L").mkdir(parents=True)
    (tmp_path / "a" / "b" / "Rain100L").mkdir(parents=True)
    assert resolve_dataset("RAIN100L", tmp_path)[1] == tmp_path / "test" / "Rain100L"


def test_resolve_ambiguous(tmp_path):
    (tmp_path / "test" / "Rain100L").mkdir(parents=True)
    (tmp_path / "train" / "Rain100L").mkdir(parents=True)
    with pytest.raises(DatasetError, match="ambiguous"):
        resolve_dataset("rain100l", tmp_path)


def test_resolve_too_deep(tmp_path):
    (tmp_path / "a" / "b" / "c" / "Rain12").mkdir(parents=True)   # depth 4
    with pytest.raises(DatasetError, match="not found") as err:
        resolve_dataset("rain12", tmp_path)
    assert str(tmp_path) in str(err.value)


def test_resolve_without_data_root():
    with pytest.raises(DatasetError) as err:
        resolve_dataset("Rain1400", None)
    assert "--data-root" in str(err.value) and "RESGUIDE_DATA" in str(err.value)


def test_resolve_unknown_name(tmp_path):
    with pytest.raises(DatasetError) as err:
        resolve_dataset("SPA-Data", tmp_path)
    msg = str(err.value)
    assert "SPA-Data" in msg and all(n in msg for n in REGISTERED.values())


# --------------------------------------------------------------------------- real data

@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("RESGUIDE_DATA"), reason="RESGUIDE_DATA not set")
def test_real_rain100l_is_known():
    root = Path(os.environ["RESGUIDE_DATA"]) / "Rain100L"
    ds = FolderPairs(root)
    info = ds.describe()
    assert info["known"] is True and info["release"] == "Rain100L"
    assert info["version"] == "old-100" and info["n_images"] == 100
    assert info["layout"] == "prenet" and info["n_files"] == 200
    assert resolve_dataset("rain100l", Path(os.environ["RESGUIDE_DATA"])) == ("Rain100L", root)
