"""The category tree, read from the training data's folder layout, never from constants.

Two layouts are accepted:

* nested: ``<root>/<main>/<sub>/<image>`` (the one to use);
* flat: ``<root>/<index>_<sub>/<image>`` (the old prototype's), with a JSON mapping file
  ``{"<sub>": "<main>", ...}`` that says which main category each sub belongs to.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from refund_sorter.errors import UserError

_FLAT_DIR = re.compile(r"^\d+_(?P<sub>.+)$")


@dataclass(frozen=True)
class Taxonomy:
    main: tuple[str, ...]
    sub: tuple[str, ...]
    sub_to_main: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sub) != len(self.sub_to_main):
            raise ValueError("sub and sub_to_main differ in length")
        if any(not 0 <= m < len(self.main) for m in self.sub_to_main):
            raise ValueError("sub_to_main points outside the main categories")

    def to_dict(self) -> dict:
        return {
            "main": list(self.main),
            "sub": list(self.sub),
            "sub_to_main": list(self.sub_to_main),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Taxonomy":
        return cls(
            tuple(data["main"]), tuple(data["sub"]), tuple(int(i) for i in data["sub_to_main"])
        )

    def index_of(self, main: str, sub: str) -> int | None:
        """Index of the sub category ``sub`` under ``main``, or None if the model lacks it."""
        for i, name in enumerate(self.sub):
            if name == sub and self.main[self.sub_to_main[i]] == main:
                return i
        return None


@dataclass
class DatasetLayout:
    """What a data folder holds: its taxonomy, its images per sub category, and its oddities."""

    taxonomy: Taxonomy
    files: list[tuple[Path, int]]  # (image file, sub index)
    empty_folders: list[Path] = field(default_factory=list)
    stray_files: list[Path] = field(default_factory=list)
    # Each data folder read, resolved, with the number of images it gave.
    folders: list[tuple[Path, int]] = field(default_factory=list)


def relabel(
    layout: DatasetLayout, taxonomy: Taxonomy
) -> tuple[list[tuple[Path, int]], dict[str, int]]:
    """Map a layout's (file, sub index) pairs onto another taxonomy, matching by name.

    Returns the relabelled pairs and, per ``main/sub`` folder that ``taxonomy`` lacks, how
    many images were left out: such images cannot be scored, only reported.
    """
    files, unknown = [], {}
    for path, idx in layout.files:
        main = layout.taxonomy.main[layout.taxonomy.sub_to_main[idx]]
        sub = layout.taxonomy.sub[idx]
        mapped = taxonomy.index_of(main, sub)
        if mapped is None:
            unknown[f"{main}/{sub}"] = unknown.get(f"{main}/{sub}", 0) + 1
        else:
            files.append((path, mapped))
    return files, unknown


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _files_under(folder: Path) -> list[Path]:
    # Hidden folders inside a class folder (.thumbnails, .ipynb_checkpoints) are not data either.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_layout(
    roots: Path | Sequence[Path], mapping_file: Path | None = None, min_subs: int = 2
) -> DatasetLayout:
    """Read one data folder, or several (a base set and the folders the review desk exports)
    as one, into a taxonomy and a list of (file, sub index): the same ``<main>/<sub>`` in two
    folders is one category.

    Folders without any file are left out of the taxonomy and reported. Raises UserError
    when a folder is missing, is given twice, or when together they hold fewer than
    ``min_subs`` sub categories with files (training needs two; evaluating a single category
    is fine).
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    if not roots:
        raise UserError("no data folder given")
    groups: dict[tuple[str, str], tuple[Path, list[Path]]] = {}
    stray: list[Path] = []
    folders: list[tuple[Path, int]] = []
    for root in roots:
        if not root.is_dir():
            raise UserError(f"data folder not found: {root}")
        if any(root.resolve() == seen for seen, _ in folders):
            raise UserError(f"data folder given twice: {root}")
        if mapping_file is not None:
            found, strays = _flat_groups(root, mapping_file)
        else:
            found, strays = _nested_groups(root)
        stray += strays
        for key, (folder, files) in found.items():
            first, kept_files = groups.get(key, (folder, []))
            groups[key] = (first, kept_files + files)
        folders.append((root.resolve(), sum(len(files) for _, files in found.values())))

    empty = [folder for (_, _), (folder, files) in groups.items() if not files]
    kept = {key: files for key, (_, files) in groups.items() if files}
    if len(kept) < min_subs:
        found_names = ", ".join(f"{m}/{s}" for m, s in kept) or "none"
        where = " and ".join(str(root) for root in roots)
        raise UserError(
            f"{where} need{'s' if len(roots) == 1 else ''} at least {min_subs} sub category "
            f"folder(s) with images (found: {found_names}). Expected layout: <main>/<sub>/<image>."
        )
    mains = sorted({m for m, _ in kept})
    keys = sorted(kept, key=lambda k: (mains.index(k[0]), k[1]))
    taxonomy = Taxonomy(
        main=tuple(mains),
        sub=tuple(s for _, s in keys),
        sub_to_main=tuple(mains.index(m) for m, _ in keys),
    )
    files = [(path, i) for i, key in enumerate(keys) for path in kept[key]]
    return DatasetLayout(taxonomy, files, sorted(empty), stray, folders)


def _nested_groups(root: Path):
    groups: dict[tuple[str, str], tuple[Path, list[Path]]] = {}
    stray: list[Path] = []
    for main_dir in sorted(p for p in root.iterdir() if _visible(p)):
        if not main_dir.is_dir():
            stray.append(main_dir)
            continue
        entries = sorted(p for p in main_dir.iterdir() if _visible(p))
        if not any(p.is_dir() for p in entries):
            # A main category without sub folders: reported like an empty sub folder.
            groups[(main_dir.name, "")] = (main_dir, [])
        for sub_dir in entries:
            if sub_dir.is_dir():
                groups[(main_dir.name, sub_dir.name)] = (sub_dir, _files_under(sub_dir))
            else:
                stray.append(sub_dir)
    return groups, stray


def _flat_groups(root: Path, mapping_file: Path):
    try:
        mapping = json.loads(Path(mapping_file).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read mapping file {mapping_file}: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise UserError(f'{mapping_file} must be a JSON object {{"<sub>": "<main>", ...}}')
    groups: dict[tuple[str, str], tuple[Path, list[Path]]] = {}
    stray: list[Path] = []
    unmapped: list[str] = []
    for folder in sorted(p for p in root.iterdir() if _visible(p)):
        match = _FLAT_DIR.match(folder.name)
        if not folder.is_dir() or not match:
            stray.append(folder)
            continue
        sub = match["sub"]
        if sub not in mapping:
            unmapped.append(folder.name)
            continue
        groups[(mapping[sub], sub)] = (folder, _files_under(folder))
    if unmapped:
        raise UserError(
            f"{mapping_file} does not say which main category these folders belong to: "
            + ", ".join(unmapped)
        )
    return groups, stray
