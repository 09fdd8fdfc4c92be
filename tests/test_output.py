"""Output files: checked before a run, written whole."""

from __future__ import annotations

from pathlib import Path

from pytest_unified_launcher._output import check_writable, write_text


def test_check_creates_folders_and_leaves_no_file(tmp_path: Path) -> None:
    """A path that can be written gets its folders now, and no empty file is left there."""
    target = tmp_path / "new" / "folder" / "report.json"
    assert check_writable(target) is None
    assert target.parent.is_dir() and not target.exists()


def test_check_keeps_an_existing_file(tmp_path: Path) -> None:
    """Checking an existing report does not truncate it (the run may still fail)."""
    target = tmp_path / "report.json"
    target.write_text("old")
    assert check_writable(target) is None
    assert target.read_text() == "old"


def test_check_names_the_problem(tmp_path: Path) -> None:
    """A file in the folder path, or a folder as the target, is named in words."""
    (tmp_path / "a-file").write_text("")
    assert check_writable(tmp_path / "a-file" / "sub" / "report.json") == f"{tmp_path / 'a-file'} is a file, not a folder"
    assert check_writable(tmp_path) == "is a directory"


def test_write_replaces_whole_and_leaves_no_partial(tmp_path: Path) -> None:
    """A report is replaced whole, with no temporary file left beside it."""
    target = tmp_path / "out" / "report.json"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
