"""Files appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2starmap.bids.atomic import atomic_path, write_json, write_text


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "a.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_failure_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "map.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".map.nii.gz.")
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    write_text(target, "old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("new but broken")
        raise ValueError
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
