"""Finding files: data.files entries and glob patterns (DESIGN.md §10)."""

import glob
import os
from pathlib import Path

import pytest

from tests.data.formats import TEXTS, write_formats
from xlstm_lm.data.files import expand_files, find_files


def test_folders_globs_and_paths_expand_in_order_each_file_once(tmp_path: Path) -> None:
    write_formats(tmp_path, TEXTS)
    plain = sorted((tmp_path / "plain").iterdir())
    files = expand_files([str(tmp_path / "plain" / "2.txt"), str(tmp_path / "plain"), str(tmp_path / "**" / "*.gz")])
    assert files == [plain[2].resolve(), plain[0].resolve(), plain[1].resolve(),
                     (tmp_path / "docs.jsonl.gz").resolve(), (tmp_path / "one.txt.gz").resolve()]


def test_glob_matching_nothing_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'.*\*\.rst' matches no file"):
        expand_files([str(tmp_path / "*.rst")])
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        expand_files([str(tmp_path / "absent.txt")])


def test_a_folder_leaves_out_hidden_files_and_python_caches(tmp_path: Path) -> None:
    for name in ("a.txt", "sub/b.txt", ".git/objects/c", "sub/.hidden.txt", "__pycache__/d.cpython-311.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text")
    expected = [(tmp_path / "a.txt").resolve(), (tmp_path / "sub" / "b.txt").resolve()]
    assert expand_files([str(tmp_path)]) == expected


def write_tree(root: Path) -> None:
    """Files at several depths, hidden ones, a cache folder and a link to a folder outside root."""
    for name in ("a.txt", "a.md", "sub/b.txt", "sub/deep/c.txt", ".hidden.txt", ".git/d.txt", "sub/.e.txt",
                 "sub/__pycache__/f.txt", "data-2/g.txt", "data/h.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root.parent / "outside").mkdir()
    (root.parent / "outside" / "i.txt").write_text("linked")
    os.symlink(root.parent / "outside", root / "linked")


@pytest.mark.parametrize("pattern", ["*.txt", "**/*.txt", "sub/*.txt", "sub/**", "*/*.txt", "**/deep/*.txt", "**"])
def test_patterns_match_what_the_glob_module_matches(tmp_path: Path, pattern: str) -> None:
    root = tmp_path / "root"
    write_tree(root)
    matches = sorted(Path(name) for name in glob.glob(str(root / pattern), recursive=True) if Path(name).is_file())
    expected = list(dict.fromkeys(match.resolve() for match in matches))
    assert expand_files([str(root / pattern)]) == expected


def test_find_files_prunes_skipped_folders_and_matches_hidden_names(tmp_path: Path) -> None:
    write_tree(tmp_path)
    found = {"/".join(parts) for parts in find_files(tmp_path, "**/*.txt", lambda name: name == "deep")}
    assert found == {"a.txt", "sub/b.txt", ".hidden.txt", ".git/d.txt", "sub/.e.txt", "sub/__pycache__/f.txt",
                     "data-2/g.txt", "data/h.txt"}
