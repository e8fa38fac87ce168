"""HDF5 map shards: atomic publication, resume after a kill, merge that never drops an image."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsss_steps.store.maps import MapReader, MapStoreError, MapWriter, merge_shards, shard_ids

PARAMS = {"scales": [1.0, 0.5]}


def write_shard(path: Path, ids: list[str], params=PARAMS, fail_after: int | None = None) -> None:
    with MapWriter(path, stage="seeds", method="cam", params=params, dataset="toy") as writer:
        for n, image_id in enumerate(i for i in ids if not writer.is_done(i)):
            if fail_after is not None and n == fail_after:
                raise KeyboardInterrupt("killed")
            value = float(int(image_id[1:]))
            writer.write(image_id, {"cam": np.full((1, 4, 5), value, np.float32), "keys": np.array([2])},
                         {"height": 4, "width": 5})
        writer.finish(ids)


def test_shards_partition_the_split() -> None:
    ids = [f"i{k}" for k in range(10)]
    parts = [shard_ids(ids, k, 3) for k in range(3)]
    assert sum(parts, []) == ids and all(parts)
    with pytest.raises(ValueError):
        shard_ids(ids, 3, 3)


def test_killed_shard_is_not_published_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "shard-0-of-1.h5"
    ids = ["i1", "i2", "i3"]
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, ids, fail_after=2)
    assert not path.exists()
    with h5py.File(path.with_name(path.name + ".partial"), "r") as partial:
        assert sorted(partial) == ["i1", "i2"] and not partial.attrs.get("complete", False)
    write_shard(path, ids)
    with MapReader(path) as reader:
        assert reader.ids == ids
        assert reader.read("i3")["cam"][0, 0, 0] == 3.0
        assert reader.params == PARAMS and reader.attrs["method"] == "cam"


def test_resume_keeps_only_the_images_that_read_back_whole(tmp_path: Path) -> None:
    # A kill mid-write can leave an image listed whose group or data no longer opens (HDF5's
    # "incorrect cache entry type"); broken external links reproduce both cases.
    path = tmp_path / "shard-0-of-1.h5"
    ids = ["i1", "i2", "i3", "i4"]
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, ids, fail_after=2)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "a") as handle:
        handle["i3"] = h5py.ExternalLink("gone.h5", "/i3")
        handle["i2"].attrs["complete"] = True
        del handle["i2"]["cam"]
        handle["i2"]["cam"] = h5py.ExternalLink("gone.h5", "/cam")
    with MapWriter(path, stage="seeds", method="cam", params=PARAMS, dataset="toy") as writer:
        assert [writer.is_done(i) for i in ids] == [True, False, False, False]
    write_shard(path, ids)
    with MapReader(path) as reader:
        assert reader.ids == ids
        assert [float(reader.read(i)["cam"][0, 0, 0]) for i in ids] == [1.0, 2.0, 3.0, 4.0]


def test_partial_file_from_other_settings_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, ["i1", "i2"], params={"scales": [2.0]}, fail_after=1)
    write_shard(path, ["i1", "i2"])
    with MapReader(path) as reader:
        assert reader.params == PARAMS


@pytest.mark.parametrize("link", [False, True])
def test_merge_checks_every_id(tmp_path: Path, link: bool) -> None:
    write_shard(tmp_path / "a.h5", ["i1", "i2"])
    write_shard(tmp_path / "b.h5", ["i3"])
    out = tmp_path / "merged.h5"
    merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], out, ["i1", "i2", "i3"], link=link)
    with MapReader(out) as reader:
        assert sorted(reader.ids) == ["i1", "i2", "i3"]
        np.testing.assert_array_equal(reader.read("i3")["keys"], [2])
        assert reader.image_attrs("i2")["width"] == 5
    with pytest.raises(MapStoreError, match=r"1 expected image\(s\) missing \(e.g. \['i4'\]\)"):
        merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m2.h5", ["i1", "i2", "i3", "i4"])
    assert not (tmp_path / "m2.h5").exists()
    with pytest.raises(MapStoreError, match="'i1' is in both"):
        merge_shards([tmp_path / "a.h5", tmp_path / "a.h5"], tmp_path / "m3.h5", ["i1", "i2"])


def test_incomplete_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("i1")
    with pytest.raises(MapStoreError, match="not marked complete"):
        MapReader(path)
    with pytest.raises(MapStoreError, match="not marked complete"):
        merge_shards([path], tmp_path / "m.h5", ["i1"])


def test_truncated_shard_is_named_with_what_to_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A finished shard cut short (a full disk) exists, so the workflow takes it as done: the merge
    and every reader name the file and say to delete it; the rerun then recomputes it."""
    import re

    shards = tmp_path / "results" / "toy" / "seeds" / "cam" / "shards"
    path, other = shards / "shard-0-of-2.h5", shards / "shard-1-of-2.h5"
    ids = [f"i{k}" for k in range(1, 9)]
    write_shard(path, ids[:4])
    write_shard(other, ids[4:])
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    expected = rf"map file {re.escape(str(path))} cannot be opened \(.*\); it is truncated or damaged .*: delete it to recompute it"
    with pytest.raises(MapStoreError, match=expected):
        merge_shards([path, other], tmp_path / "maps.h5", ids)
    with pytest.raises(MapStoreError, match=expected):
        MapReader(path)
    path.unlink()  # as the message says; the shard's rerun computes it again
    write_shard(path, ids[:4])
    merge_shards([path, other], tmp_path / "maps.h5", ids)
    with MapReader(tmp_path / "maps.h5") as reader:
        assert reader.ids == ids
    # a partial file cut short is not resumed from: the shard starts over, and says why
    with pytest.raises(KeyboardInterrupt):
        write_shard(other, ids[4:] + ["i9"], fail_after=1)
    partial = other.with_name(other.name + ".partial")
    with partial.open("r+b") as handle:
        handle.truncate(partial.stat().st_size // 2)
    with caplog.at_level("WARNING"):
        write_shard(other, ids[4:] + ["i9"])
    assert f"{partial} cannot be read" in caplog.text and "starting this shard over" in caplog.text
    with MapReader(other) as reader:
        assert reader.ids == ids[4:] + ["i9"]


@pytest.mark.parametrize("link", [False, True])
def test_a_reader_reopening_its_file_reads_every_image_whole(tmp_path: Path, monkeypatch, link: bool) -> None:
    """The reader reopens its file every REOPEN_EVERY reads (HDF5's metadata cache grows with every
    object read until the file closes): reads across the reopenings, through a merged file's links
    too, return each image's own arrays."""
    from wsss_steps.store import maps

    monkeypatch.setattr(maps, "REOPEN_EVERY", 3)
    ids = [f"i{k}" for k in range(10)]
    write_shard(tmp_path / "a.h5", ids[:6])
    write_shard(tmp_path / "b.h5", ids[6:])
    merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "maps.h5", ids, link=link)
    with MapReader(tmp_path / "maps.h5") as reader:
        first = reader._file
        values = [float(reader.read(image_id)["cam"][0, 0, 0]) for image_id in ids + ids[:2]]
        assert reader._file is not first  # reopened
    assert values == [float(k) for k in range(10)] + [0.0, 1.0]
