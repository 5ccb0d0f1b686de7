"""Reviewed photos back into training: each photo a person decided is copied, under its
latest answer, into ``OUT_DIR/<main>/<sub>/``, the layout ``refund-sorter train`` reads.

A copy is named ``<name>-<first 12 hex of its content hash><suffix>``, so photos that share
a name stay apart and an export into the same folder again copies nothing twice; a photo
whose answer changed since is moved to its new category.
"""

import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from models import Prediction
from refund_sorter.atomic import atomic_write
from refund_sorter.crud import latest_reviews


@dataclass
class TrainingSetReport:
    copied: Counter = field(default_factory=Counter)  # per "main/sub"
    moved: int = 0  # answer changed since an earlier export into this folder
    already_there: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (photo, why)

    @property
    def total(self) -> int:
        return sum(self.copied.values())


@dataclass(frozen=True)
class ReviewedPhoto:
    path: Path
    file_name: str
    content_hash: str
    main: str
    sub: str

    @property
    def copy_name(self) -> str:
        name = Path(self.file_name)
        return f"{name.stem}-{self.content_hash[:12]}{name.suffix.lower()}"


def reviewed_photos(session: Session, since: date | None = None) -> list[ReviewedPhoto]:
    """Every reviewed photo with its latest answer; with ``since``, only those whose latest
    answer was given on or after that day (UTC)."""
    review = latest_reviews()
    query = (
        select(
            Prediction.final_path,
            Prediction.original_path,
            Prediction.file_name,
            Prediction.content_hash,
            review.c.main_category,
            review.c.sub_category,
        )
        .join(review, review.c.prediction_id == Prediction.id)
        .order_by(Prediction.id)
    )
    if since is not None:
        query = query.where(review.c.reviewed_at >= datetime.combine(since, time.min, tzinfo=UTC))
    return [
        ReviewedPhoto(Path(final or original), name, content_hash, main, sub)
        for final, original, name, content_hash, main, sub in session.execute(query)
    ]


def _plain_folder_name(name: str) -> bool:
    # Categories come from the taxonomy's folder names; a row edited by hand must still not
    # write outside OUT_DIR or into a hidden folder that training skips.
    return bool(name) and name not in (".", "..") and not name.startswith(".") and "/" not in name


def export_training_set(
    photos: Iterable[ReviewedPhoto], out_dir: Path, progress: bool = False
) -> TrainingSetReport:
    """Copy ``photos`` into ``out_dir/<main>/<sub>/``. A photo that cannot be read is
    reported, not fatal; each copy appears whole or not at all (written beside, renamed)."""
    photos = list(photos)
    out_dir = Path(out_dir)
    earlier = {p.name: p for p in out_dir.glob("*/*/*") if p.is_file()}
    report = TrainingSetReport()
    for photo in tqdm(photos, desc="copying", unit="photo", disable=not progress):
        if not (_plain_folder_name(photo.main) and _plain_folder_name(photo.sub)):
            report.missing.append((str(photo.path), f"unusable category {photo.main}/{photo.sub}"))
            continue
        dest = out_dir / photo.main / photo.sub / photo.copy_name
        before = earlier.get(photo.copy_name)
        if before == dest:
            report.already_there += 1
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if before is not None:  # exported under an answer that has changed since
            os.replace(before, dest)
            report.moved += 1
        else:
            try:
                with open(photo.path, "rb") as src, atomic_write(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            except OSError as exc:
                report.missing.append((str(photo.path), exc.strerror or str(exc)))
                continue
        report.copied[f"{photo.main}/{photo.sub}"] += 1
    return report
