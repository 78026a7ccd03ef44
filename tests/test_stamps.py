"""A stored run is only used while the files its config names are unchanged: the stamps
taken when it started are compared with the files now."""

from __future__ import annotations

import os

from xmrbench.store.stamps import changed_files, file_stamps


def test_stamps_name_every_existing_file_a_config_names(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    a.write_bytes(b"12345")
    b.write_text("x")
    config = {"data": {"candidates": {"i2t": str(a)}, "word_vectors": str(b)},
              "model": {"name": "vsepp", "dims": [str(tmp_path / "absent.npy"), 3]}, "note": str(tmp_path)}
    stamps = file_stamps(config)
    assert sorted(stamps) == sorted([str(a), str(b)])  # not the folder, not the missing file
    assert stamps[str(a)][0] == 5 and changed_files(stamps, config) == []


def test_a_changed_gone_or_new_file_is_named(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    a.write_bytes(b"1")
    config = {"x": str(a), "y": str(b)}
    stamps = file_stamps(config)
    assert changed_files(None, config) == []  # a run from before stamps were kept
    a.write_bytes(b"22")
    assert changed_files(stamps, config) == [f"{a} changed since the run"]
    a.write_bytes(b"3")  # the original size again, a later modification time
    os.utime(a, ns=(0, stamps[str(a)][1] + 10**9))
    assert changed_files(stamps, config) == [f"{a} changed since the run"]
    os.utime(a, ns=(0, stamps[str(a)][1]))
    assert changed_files(stamps, config) == []  # size and time as recorded: taken as unchanged
    b.write_bytes(b"0")
    assert f"{b} now exists" in changed_files(stamps, config)
    a.unlink()
    assert f"{a} is gone" in changed_files(stamps, config)
