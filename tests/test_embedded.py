import numpy as np
import pytest

from datasets import embedded
from datasets.embedded import (
    SOURCES,
    TEST_NAMES,
    TRAIN_NAMES,
    EmbeddedPairs,
    clean_images,
    image_seed,
)


def test_split_disjoint_and_complete():
    assert not set(TEST_NAMES) & set(TRAIN_NAMES)
    assert set(TEST_NAMES) | set(TRAIN_NAMES) == {n for n, _, _ in SOURCES}
    assert len(TEST_NAMES) >= 1 and len(TRAIN_NAMES) >= len(TEST_NAMES)
    assert len(embedded.available_sources()) >= 8


def test_clean_images_sizes_and_order():
    for split, names in (("test", TEST_NAMES), ("train", TRAIN_NAMES)):
        imgs = clean_images(split, 48)
        got = [n for n, _ in imgs]
        assert got == sorted(got)
        assert set(got) <= set(names)
        for _, arr in imgs:
            assert arr.dtype == np.uint8 and arr.shape == (48, 48, 3)
            assert arr.std() > 5  # a real photo, not a blank
    assert {n for n, _ in clean_images("train", 48)}.isdisjoint(n for n, _ in clean_images("test", 48))
    with pytest.raises(ValueError):
        clean_images("val", 48)


def test_clean_images_are_copies():
    a = clean_images("test", 32)
    a[0][1][:] = 0
    b = clean_images("test", 32)
    assert b[0][1].any()


def test_pairs_deterministic():
    a = EmbeddedPairs("light", "test", size=64, seed=3)
    b = EmbeddedPairs("light", "test", size=64, seed=3)
    la, lb = list(a), list(b)
    assert len(la) == len(a) == len(TEST_NAMES)
    for (na, ra, ca), (nb, rb, cb) in zip(la, lb):
        assert na == nb
        assert np.array_equal(ra, rb) and np.array_equal(ca, cb)
        assert ra.shape == ca.shape == (64, 64, 3) and ra.dtype == ca.dtype == np.uint8
        assert not np.array_equal(ra, ca)
    da, db = a.describe(), b.describe()
    assert da == db
    assert da["fingerprint"] == db["fingerprint"] and len(da["fingerprint"]) == 64
    c = EmbeddedPairs("light", "test", size=64, seed=4)
    assert c.describe()["fingerprint"] != da["fingerprint"]
    assert image_seed(3, "coffee") == image_seed(3, "coffee") != image_seed(4, "coffee")


def test_heavy_differs_from_light_and_iteration_is_cached():
    light = EmbeddedPairs("light", "test", size=48)
    heavy = EmbeddedPairs("heavy", "test", size=48)
    dl = np.mean([np.abs(r.astype(int) - c).mean() for _, r, c in light])
    dh = np.mean([np.abs(r.astype(int) - c).mean() for _, r, c in heavy])
    assert dh > dl > 0
    first = next(iter(light))
    first[1][:] = 0  # mutating a yielded array must not change the cache
    again = next(iter(light))
    assert again[1].any()


def test_limit():
    full = EmbeddedPairs("light", "train", size=32)
    lim = EmbeddedPairs("light", "train", size=32, limit=2)
    assert len(lim) == 2 == len(list(lim))
    assert [n for n, _, _ in lim] == [n for n, _, _ in full][:2]
    for (_, r1, c1), (_, r2, c2) in zip(lim, full):
        assert np.array_equal(r1, r2) and np.array_equal(c1, c2)
    assert lim.describe()["n_images"] == 2
    assert len(EmbeddedPairs("light", "test", size=32, limit=100)) == len(TEST_NAMES)


def test_describe_fields():
    d = EmbeddedPairs("heavy", "train", size=32, seed=1).describe()
    assert d["name"] == "embedded-heavy-train"
    assert d["n_images"] == len(TRAIN_NAMES)
    assert d["known"] is True and d["release"] == "embedded"
    assert d["version"] == "size32-seed1"
    assert d["split"] == "train" and d["rain"] == "heavy"
    assert "fingerprint" in d and "source" in d
    assert EmbeddedPairs("light").name == "embedded-light"


def test_too_few_images_raises(monkeypatch):
    embedded.available_sources.cache_clear()
    try:
        monkeypatch.setattr(embedded, "_package_dir", lambda package: None)
        with pytest.raises(RuntimeError, match="at least"):
            embedded.available_sources()
    finally:
        monkeypatch.undo()
        embedded.available_sources.cache_clear()
    assert len(embedded.available_sources()) >= 8
