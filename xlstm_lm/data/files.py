"""Finding files: the one glob matcher of the data package (DESIGN.md §10).

`find_files` walks a folder and matches each file's relative path against a "/"-separated pattern: "**"
spans any number of folders, every other segment matches one name by `fnmatch` (case-sensitive). It serves
the folder corpus (`corpus.list_corpus`: root and glob) and `expand_files`, which turns `data.files` entries
(paths, folders, glob patterns) into files. Walking with `os.walk` lets a caller prune folders before they are
entered (the corpus never enters site-packages), and folders that cannot hold a match are never entered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path

GLOB_CHARACTERS = frozenset("*?[")


def find_files(
    root: Path, pattern: str, skip_folder: Callable[[str], bool], follow_links: bool = False
) -> list[tuple[str, ...]]:
    """The files under root whose relative path matches pattern, in the order `os.walk` finds them.

    Args:
        root: the folder to search.
        pattern: "/"-separated; "**" matches any number of folders, other segments one name each (a "*" also
            matches a name starting with ".").
        skip_folder: folders whose name it accepts are not entered.
        follow_links: enter symbolic links to folders too.

    Returns:
        The relative paths, each as its parts.
    """
    segments = tuple(pattern.strip("/").split("/"))
    matches = []
    for folder, subfolders, names in os.walk(root, followlinks=follow_links):
        folder_parts = Path(folder).relative_to(root).parts
        subfolders[:] = [name for name in subfolders
                         if not skip_folder(name) and _may_hold_matches(folder_parts + (name,), segments)]
        matches += [folder_parts + (name,) for name in names if _glob_matches(folder_parts + (name,), segments)]
    return matches


def expand_files(patterns: list[str]) -> list[Path]:
    """The files named by paths, folders and glob patterns, in the order given, each once. A folder gives
    every file below it except hidden ones (a name starting with ".", e.g. .git) and __pycache__; a pattern
    the files it matches, with no hidden name below its first wildcard (as the shell's wildcards skip them).

    Raises:
        FileNotFoundError: a path without wildcards does not exist.
        ValueError: a pattern or folder matches no file.
    """
    files: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _files_below(path, "**", lambda name: name.startswith(".") or name == "__pycache__", False)
        elif GLOB_CHARACTERS & set(pattern):
            first = next(index for index, part in enumerate(path.parts) if GLOB_CHARACTERS & set(part))
            matches = _files_below(Path(*path.parts[:first]), "/".join(path.parts[first:]),
                                   lambda name: name.startswith("."), True)
        else:
            raise FileNotFoundError(f"data file {path} does not exist (data.files lists files, folders and globs)")
        if not matches:
            raise ValueError(f"data.files entry {pattern!r} matches no file: check the path and the pattern")
        files.update(dict.fromkeys(file.resolve() for file in matches))
    return list(files)


def _files_below(root: Path, pattern: str, skip: Callable[[str], bool], follow_links: bool) -> list[Path]:
    """The files `find_files` matches, except those whose name `skip`s, sorted as paths."""
    found = (root.joinpath(*parts) for parts in find_files(root, pattern, skip, follow_links) if not skip(parts[-1]))
    return sorted(file for file in found if file.is_file())


def _glob_matches(parts: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """Whether path parts match glob segments; "**" matches any number of parts, others match one."""
    if not segments:
        return not parts
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(_glob_matches(parts[start:], rest) for start in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _glob_matches(parts[1:], rest)


def _may_hold_matches(folder_parts: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """Whether a file below a folder (given by its parts) may match glob segments."""
    if not segments:
        return False
    if segments[0] == "**":
        return True
    if not folder_parts:
        return True
    return fnmatchcase(folder_parts[0], segments[0]) and _may_hold_matches(folder_parts[1:], segments[1:])
