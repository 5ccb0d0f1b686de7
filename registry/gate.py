"""The promotion gate: whether a candidate may serve in place of the serving model (``gate``),
and the paired tallies it reads. ``registry.promote`` runs it on every promotion;
``review.comparison`` shows the same tallies with their intervals (``model compare``, the
desk's Models page).

- *live*: the photos the serving model classified in the nights (sweeps) started since the
  candidate was registered that a person labelled (the latest review not undone of a flagged
  photo, and the decided audits) and the candidate answered in its shadow
  (``labelled_tallies``), in strata of night and flag, each weighted by its share of the
  photos; McNemar's exact test within each stratum, combined as the exact binomial test on
  the discordant photos pooled over the strata (``paired_strata``).
- *folder*: both models on a labelled folder, every photo counting alike (``paired_photos``),
  measured by the caller that runs them (``model promote --data``).

Photos whose content hash is among the candidate's training, validation or calibration
photos (``training_hashes``) are left out: a model must not win on photos it learned.
"""

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from models import ItemStatus, ModelVersion, Prediction, ShadowPrediction, SweepRun
from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from registry.checkpoint_taxonomy import read_payload

MCNEMAR = "McNemar's exact test, stratified by night and flag (discordant photos pooled)"
MCNEMAR_ONE = "McNemar's exact test"
LEVELS = ("main", "sub")
# Content hashes asked about per statement (bound parameters) when training photos are
# subtracted from a count.
HASH_CHUNK = 2000


# ------------------------------------------------------------------------- the paired test


def exact_binomial_p(k: int, n: int) -> float:
    """Two-sided p-value of ``k`` successes in ``n`` trials against probability 1/2: twice
    the smaller tail, at most 1. Exact in integers, so it holds for any ``n``."""
    k, n = int(k), int(n)
    if n == 0:
        return 1.0
    low = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2 * low / 2**n)


@dataclass(frozen=True)
class Discordant:
    """The labelled photos one model had right and the other wrong, in one stratum."""

    candidate_only: int = 0  # the candidate right, the serving model wrong
    serving_only: int = 0

    @property
    def p_value(self) -> float:
        """McNemar's exact test: the discordant photos split as a fair coin would?"""
        return exact_binomial_p(self.candidate_only, self.candidate_only + self.serving_only)


# ---------------------------------------------------------------------- the paired tallies


class Figure(Protocol):
    """An accuracy as the gate reads it: its value (None without a labelled photo)."""

    value: float | None


@dataclass(frozen=True)
class Point:
    """An accuracy's value alone: all the gate reads (``review.accuracy``'s ``Estimate``
    adds its interval, for people)."""

    value: float | None


def stratified_point(strata: Iterable[tuple[int, int, int]]) -> Point:
    """The accuracy over strata of (photos, labelled, right), each stratum weighted by its
    photos; a stratum without a labelled photo is left out. The value of
    ``review.accuracy.stratified``, without its interval."""
    known = [(size, labelled, right) for size, labelled, right in strata if labelled and size]
    total = sum(size for size, _, _ in known)
    if not total:
        return Point(None)
    value = 0.0
    for size, labelled, right in known:
        value += size / total * (right / labelled)
    return Point(value)


def point_share(k: int, n: int) -> Point:
    """``k`` of ``n``, without its interval."""
    return Point(k / n if n else None)


@dataclass(frozen=True)
class StratumPair:
    """One night's flagged or unflagged stratum, on one level."""

    sweep: int
    flagged: bool
    photos: int
    labelled: int
    serving_right: int
    candidate_right: int
    candidate_only: int
    serving_only: int
    p_value: float  # McNemar's exact test within the stratum


@dataclass(frozen=True)
class Paired:
    """Both models' accuracy on one level, on the same labelled photos, and the paired test."""

    level: str
    serving: Figure
    candidate: Figure
    candidate_only: int  # labelled photos the candidate had right and the serving model wrong
    serving_only: int
    p_value: float
    test: str
    strata: list[StratumPair] = field(default_factory=list)

    @property
    def candidate_worse(self) -> bool:
        """The candidate's accuracy is the lower one (whatever the noise)."""
        if self.candidate.value is None or self.serving.value is None:
            return False
        return self.candidate.value < self.serving.value


@dataclass(frozen=True)
class Labelled:
    """One photo a person labelled, with whether each model had it right, in its stratum."""

    sweep: int
    flagged: bool  # by the serving model: the stratum
    serving: tuple[bool, bool]  # right on (main, sub)
    candidate: tuple[bool, bool]


def paired_strata(
    photos: Iterable[Labelled],
    sizes: dict[tuple[int, bool], int],
    level: str,
    accuracy: Callable[[Iterable[tuple[int, int, int]]], Figure] = stratified_point,
) -> Paired:
    """Both models' accuracy on ``level`` over the strata (night, flagged) of ``sizes``
    (each stratum's number of photos), from the labelled ``photos``, and the paired test.
    ``accuracy`` makes a model's figure from its strata's (photos, labelled, right)."""
    i = LEVELS.index(level)
    tally: dict[tuple[int, bool], Counter] = {key: Counter() for key in sizes}
    for p in photos:
        c = tally.setdefault((p.sweep, p.flagged), Counter())
        s, k = bool(p.serving[i]), bool(p.candidate[i])
        c["labelled"] += 1
        c["serving"] += s
        c["candidate"] += k
        c["candidate_only"] += k and not s
        c["serving_only"] += s and not k
    strata = []
    for (sweep, flagged), c in sorted(tally.items()):
        d = Discordant(c["candidate_only"], c["serving_only"])
        photos_in = max(sizes.get((sweep, flagged), 0), c["labelled"])
        strata.append(
            StratumPair(
                sweep,
                flagged,
                photos_in,
                c["labelled"],
                c["serving"],
                c["candidate"],
                d.candidate_only,
                d.serving_only,
                d.p_value,
            )
        )
    pooled = Discordant(sum(s.candidate_only for s in strata), sum(s.serving_only for s in strata))
    return Paired(
        level,
        accuracy((s.photos, s.labelled, s.serving_right) for s in strata),
        accuracy((s.photos, s.labelled, s.candidate_right) for s in strata),
        pooled.candidate_only,
        pooled.serving_only,
        pooled.p_value,
        MCNEMAR,
        strata,
    )


def paired_photos(
    serving: Sequence[bool],
    candidate: Sequence[bool],
    level: str,
    share: Callable[[int, int], Figure] = point_share,
) -> Paired:
    """Both models' accuracy on ``level`` on the same photos, each counting alike (a labelled
    folder), and McNemar's exact test. ``share`` makes a model's figure from k right of n."""
    pairs = [(bool(s), bool(k)) for s, k in zip(serving, candidate, strict=True)]
    d = Discordant(sum(k and not s for s, k in pairs), sum(s and not k for s, k in pairs))
    return Paired(
        level,
        share(sum(s for s, _ in pairs), len(pairs)),
        share(sum(k for _, k in pairs), len(pairs)),
        d.candidate_only,
        d.serving_only,
        d.p_value,
        MCNEMAR_ONE,
    )


# ----------------------------------------------------------------------- the live tallies


def training_hashes(model_file: Path) -> set[str] | None:
    """The content hashes of every photo the model at ``model_file`` trained, validated or
    calibrated on; None when its checkpoint does not list them (trained before they were
    recorded)."""
    meta = read_payload(model_file).get("meta")
    hashes = meta.get("content_hashes") if isinstance(meta, dict) else None
    return set(hashes) if isinstance(hashes, list) else None


def served(serving: str, since: datetime) -> ColumnElement[bool]:
    """The photos the model ``serving`` classified in the sweeps started at ``since`` or
    later: the live comparison's photos."""
    nights = (
        select(SweepRun.id)
        .where(SweepRun.started_at >= since, SweepRun.model_version == serving)
        .scalar_subquery()
    )
    return and_(
        Prediction.status == ItemStatus.OK,
        # As the unique index's predicate, so that the index serves the lookups by hash.
        Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
        Prediction.model_version == serving,
        Prediction.sweep_run_id.in_(nights),
    )


def grouped_without(
    session: Session, statement: Select, keys: int, hashes: Sequence[str]
) -> tuple[dict[tuple, list[int]], dict[tuple, list[int]]]:
    """The rows of a grouped ``statement`` (``keys`` key columns, then counts) less those of
    the photos whose content hash is in ``hashes``, and those left out, both by key."""
    kept: dict[tuple, list[int]] = {}
    for row in session.execute(statement):
        kept[tuple(row[:keys])] = [int(v or 0) for v in row[keys:]]
    left: dict[tuple, list[int]] = {}
    for start in range(0, len(hashes), HASH_CHUNK):
        chunk = hashes[start : start + HASH_CHUNK]
        for row in session.execute(statement.where(Prediction.content_hash.in_(chunk))):
            key, values = tuple(row[:keys]), [int(v or 0) for v in row[keys:]]
            before = left.get(key, [0] * len(values))
            left[key] = [a + b for a, b in zip(before, values, strict=True)]
            kept[key] = [a - b for a, b in zip(kept[key], values, strict=True)]
    return kept, left


@dataclass
class LabelledTallies:
    """The live photos the gate reads, training photos left out."""

    sizes: dict[tuple[int, bool], int]  # photos per stratum: (sweep, flagged by serving)
    labelled: list[Labelled]  # with both models' answers
    labelled_without_candidate: int  # labelled, but the candidate gave no answer: left out
    labelled_learned: int  # labelled, but learned by the candidate: left out
    photos_learned: int  # of the nights' photos, learned by the candidate: left out
    audits_undecided: int  # drawn and not decided yet: the figures are provisional meanwhile
    others: int  # photos neither flagged nor audited: shadowed only by chance


def labelled_tallies(
    session: Session, *, candidate: str, serving: str, since: datetime, hashes: set[str] | None
) -> LabelledTallies:
    """Read the photos the serving model classified in the sweeps started at ``since`` or
    later, less those whose content hash is in ``hashes``: their strata by SQL aggregates,
    the labelled ones row by row with both models' answers."""
    hashes = hashes or set()
    review = crud.latest_reviews()
    live = served(serving, since)
    strata, strata_left = grouped_without(
        session,
        select(
            Prediction.sweep_run_id,
            Prediction.needs_review,
            Prediction.audited,
            func.count(),
            func.count(review.c.prediction_id),
        )
        .outerjoin(review, review.c.prediction_id == Prediction.id)
        .where(live)
        .group_by(Prediction.sweep_run_id, Prediction.needs_review, Prediction.audited),
        3,
        sorted(hashes),
    )
    sizes: dict[tuple[int, bool], int] = {}
    audits_undecided = others = 0
    for (sweep, flagged, audited), (photos, decided) in strata.items():
        sizes[(sweep, bool(flagged))] = sizes.get((sweep, bool(flagged)), 0) + photos
        if audited and not flagged:
            audits_undecided += photos - decided
        elif not flagged:
            others += photos

    shadow = ShadowPrediction
    labelled, without, learned = [], 0, 0
    rows = session.execute(
        select(
            Prediction.sweep_run_id,
            Prediction.needs_review,
            Prediction.content_hash,
            Prediction.main_category,
            Prediction.sub_category,
            review.c.main_category,
            review.c.sub_category,
            shadow.main_category,
            shadow.sub_category,
        )
        .join(review, review.c.prediction_id == Prediction.id)
        .outerjoin(
            shadow, and_(shadow.prediction_id == Prediction.id, shadow.model_version == candidate)
        )
        .where(live, Prediction.needs_review | Prediction.audited)
    )
    for sweep, flagged, content, s_main, s_sub, main, sub, c_main, c_sub in rows:
        if content in hashes:
            learned += 1
        elif c_main is None:
            without += 1
        else:
            labelled.append(
                Labelled(
                    sweep,
                    bool(flagged),
                    (s_main == main, s_main == main and s_sub == sub),
                    (c_main == main, c_main == main and c_sub == sub),
                )
            )
    return LabelledTallies(
        sizes=sizes,
        labelled=labelled,
        labelled_without_candidate=without,
        labelled_learned=learned,
        photos_learned=sum(v[0] for v in strata_left.values()),
        audits_undecided=audits_undecided,
        others=others,
    )


# --------------------------------------------------------------------------------- the gate


class Source(Protocol):
    """What the gate reads of a comparison: both levels' paired figures."""

    main: Paired
    sub: Paired


class LiveSource(Source, Protocol):
    labelled: int  # labelled live photos with both answers


class FolderSource(Source, Protocol):
    data_dir: str
    photos: int  # scored photos of the folder


@dataclass(frozen=True)
class Live:
    """The live tallies as the gate reads them (``review.comparison.Live`` adds the rest)."""

    main: Paired
    sub: Paired
    labelled: int


@dataclass(frozen=True)
class GateDecision:
    """Whether the comparison lets the candidate serve, and why not."""

    passed: bool
    reasons: list[str]  # why it is refused (none when it passes)
    p_value: float  # the paired test's p below which a lower accuracy counts as worse
    min_labelled: int
    judged_on: list[str]  # the sources with enough labelled photos: "live", "folder"


def gate(
    live: LiveSource | None, folder: FolderSource | None, *, p_value: float, min_labelled: int
) -> GateDecision:
    """Refuse a candidate that is worse than the serving model beyond noise on the labelled
    live photos or on the folder (accuracy lower on either level, the paired test's p-value
    below ``p_value``), or that has too few labelled photos to judge: fewer than
    ``min_labelled`` labelled live photos, unless the folder has that many photos."""
    reasons, judged_on = [], []
    for name, found, count in (
        ("live", live, live and live.labelled),
        ("folder", folder, folder and folder.photos),
    ):
        if found is None:
            continue
        for paired in (found.main, found.sub):
            if paired.candidate_worse and paired.p_value < p_value:
                reasons.append(
                    f"{name}: the candidate's {paired.level} accuracy "
                    f"{_percent(paired.candidate)} is below the serving model's "
                    f"{_percent(paired.serving)} beyond noise ({paired.serving_only} "
                    f"photos only the serving model had right, {paired.candidate_only} only "
                    f"the candidate: McNemar's exact p = {paired.p_value:.2g} < {p_value})"
                )
        if count >= min_labelled:
            judged_on.append(name)
    if not judged_on:
        have = f"{live.labelled} labelled live photos" if live else "no live comparison"
        if folder is not None:
            have += f" and {folder.photos} photos in {folder.data_dir}"
        reasons.append(
            f"too few labelled photos to judge: {have}, {min_labelled} needed "
            "(REFUND_SORTER_GATE_MIN_LABELLED) in the live nights, or in --data DIR when "
            "the live ones are too few"
        )
    return GateDecision(not reasons, reasons, p_value, min_labelled, judged_on)


def _percent(figure: Figure) -> str:
    return "n/a" if figure.value is None else f"{100 * figure.value:.1f}%"


def judge(
    settings: Settings,
    candidate: ModelVersion,
    serving: ModelVersion,
    candidate_file: Path,
    folder: FolderSource | None = None,
) -> GateDecision:
    """The gate's decision on ``candidate`` against ``serving``: on the live photos since the
    candidate was registered, read here, and on ``folder`` when the caller measured one."""
    with session_factory(settings.database_url)() as session:
        tallies = labelled_tallies(
            session,
            candidate=candidate.version,
            serving=serving.version,
            since=candidate.registered_at,
            hashes=training_hashes(candidate_file),
        )
    main, sub = (paired_strata(tallies.labelled, tallies.sizes, level) for level in LEVELS)
    return gate(
        Live(main, sub, len(tallies.labelled)),
        folder,
        p_value=settings.gate_p_value,
        min_labelled=settings.gate_min_labelled,
    )
