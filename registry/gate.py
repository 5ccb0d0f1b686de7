"""The promotion gate: whether a candidate may serve in place of the serving model (``gate``),
and the paired tallies it reads. ``registry.promote`` runs it on every promotion;
``review.comparison`` shows the same tallies with their intervals (``model compare``, the
desk's Models page).

- *live*: the photos the serving model classified in the nights (sweeps) started since the
  candidate was registered that a person labelled (the latest review not undone of a flagged
  photo, and the decided audits) and the candidate answered in its shadow
  (``labelled_tallies``), in strata of night and flag, each weighted by its share of the
  photos; the difference of the two accuracies over the flagged and the unflagged photos
  with its one-sided upper bound (``refund_sorter.stats.paired_difference``), and whether
  each label was given blind (``paired_strata``).
- *folder*: both models on a labelled folder, every photo counting alike (``paired_photos``),
  measured by the caller that runs them (``model promote --data``).

The gate is a non-inferiority test: it refuses a candidate that may be worse than the
serving model by more than a margin, and judges only on enough blind labels (or a folder).

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
from refund_sorter import crud, stats
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.stats import Difference, PairedStratum, paired_difference
from registry.checkpoint_taxonomy import read_payload

LEVELS = ("main", "sub")
# Content hashes asked about per statement (bound parameters) when training photos are
# subtracted from a count.
HASH_CHUNK = 2000
# The one-sided confidence of the gate's bound on how much worse the candidate may be.
CONFIDENCE = 0.95
# The kinds of label a verdict rests on.
BLIND, SEEN, UNLABELLED, FOLDER = "blind", "seen", "unlabelled", "folder"


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
    photos (``refund_sorter.stats.stratified_point``): the value the pages show, without its
    interval."""
    return Point(stats.stratified_point(strata))


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
    blind: int  # of its labels, those given without the serving model's answer shown


@dataclass(frozen=True)
class Paired:
    """Both models' accuracy on one level, on the same labelled photos, and how much worse
    the candidate may be: the difference the gate judges."""

    level: str
    serving: Figure
    candidate: Figure
    candidate_only: int  # labelled photos the candidate had right and the serving model wrong
    serving_only: int
    difference: Difference  # serving accuracy less the candidate's, with its upper bound
    # The share of the difference's weight that rests on each kind of label (BLIND, SEEN,
    # UNLABELLED: a stratum nobody labelled; FOLDER).
    rests_on: dict[str, float] = field(default_factory=dict)
    strata: list[StratumPair] = field(default_factory=list)

    @property
    def blind_unflagged(self) -> int:
        """The labels of photos the serving model did not flag, given blind (the audits):
        what the gate's minimum counts, since those photos are most of the population."""
        return sum(s.blind for s in self.strata if not s.flagged)


@dataclass(frozen=True)
class Labelled:
    """One photo a person labelled, with whether each model had it right, in its stratum."""

    sweep: int
    flagged: bool  # by the serving model: the stratum
    serving: tuple[bool, bool]  # right on (main, sub)
    candidate: tuple[bool, bool]
    blind: bool = False  # labelled without the serving model's answer shown (recorded)


def paired_strata(
    photos: Iterable[Labelled],
    sizes: dict[tuple[int, bool], int],
    level: str,
    accuracy: Callable[[Iterable[tuple[int, int, int]]], Figure] = stratified_point,
) -> Paired:
    """Both models' accuracy on ``level`` over the strata (night, flagged) of ``sizes``
    (each stratum's number of photos), from the labelled ``photos``, and the difference.
    ``accuracy`` makes a model's figure from its strata's (photos, labelled, right).

    The difference pools the nights into two strata, flagged and unflagged, each weighted by
    its photos: audits are drawn at one rate across the nights, so the pooled audits are a
    sample of the pooled unflagged photos, and a night of a few audits adds no stratum of
    its own whose handful of labels would widen the bound."""
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
        c["blind"] += bool(p.blind)
    strata = [
        StratumPair(
            sweep,
            flagged,
            max(sizes.get((sweep, flagged), 0), c["labelled"]),
            c["labelled"],
            c["serving"],
            c["candidate"],
            c["candidate_only"],
            c["serving_only"],
            c["blind"],
        )
        for (sweep, flagged), c in sorted(tally.items())
    ]
    return paired_from_strata(strata, level, accuracy)


def paired_from_strata(
    strata: Sequence[StratumPair],
    level: str,
    accuracy: Callable[[Iterable[tuple[int, int, int]]], Figure] = stratified_point,
) -> Paired:
    """``paired_strata``'s figures from the strata's tallies."""
    by_flag = []
    for flagged in (True, False):
        group = [s for s in strata if s.flagged == flagged]
        pooled = PairedStratum(
            sum(s.photos for s in group),
            sum(s.labelled for s in group),
            sum(s.serving_only for s in group),
            sum(s.candidate_only for s in group),
        )
        by_flag.append((pooled, sum(s.blind for s in group)))
    return Paired(
        level,
        accuracy((s.photos, s.labelled, s.serving_right) for s in strata),
        accuracy((s.photos, s.labelled, s.candidate_right) for s in strata),
        sum(s.candidate_only for s in strata),
        sum(s.serving_only for s in strata),
        paired_difference((stratum for stratum, _ in by_flag), CONFIDENCE),
        rests_on(by_flag),
        list(strata),
    )


def rests_on(strata: Sequence[tuple[PairedStratum, int]]) -> dict[str, float]:
    """How much of a difference's weight rests on blind labels, on seen ones and on strata
    nobody labelled, from its strata and the blind labels of each."""
    total = sum(s.photos for s, _ in strata)
    shares = {BLIND: 0.0, SEEN: 0.0, UNLABELLED: 0.0}
    for s, blind in strata:
        if not total or not s.photos:
            continue
        weight = s.photos / total
        if not s.labelled:
            shares[UNLABELLED] += weight
        else:
            shares[BLIND] += weight * blind / s.labelled
            shares[SEEN] += weight * (s.labelled - blind) / s.labelled
    return {kind: share for kind, share in shares.items() if share > 0}


def paired_photos(
    serving: Sequence[bool],
    candidate: Sequence[bool],
    level: str,
    share: Callable[[int, int], Figure] = point_share,
) -> Paired:
    """Both models' accuracy on ``level`` on the same photos, each counting alike (a labelled
    folder), and the difference in one stratum. ``share`` makes a model's figure from k
    right of n."""
    pairs = [(bool(s), bool(k)) for s, k in zip(serving, candidate, strict=True)]
    candidate_only = sum(k and not s for s, k in pairs)
    serving_only = sum(s and not k for s, k in pairs)
    stratum = PairedStratum(len(pairs), len(pairs), serving_only, candidate_only)
    return Paired(
        level,
        share(sum(s for s, _ in pairs), len(pairs)),
        share(sum(k for _, k in pairs), len(pairs)),
        candidate_only,
        serving_only,
        paired_difference([stratum], CONFIDENCE),
        {FOLDER: 1.0} if pairs else {},
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
            review.c.blind,
            shadow.main_category,
            shadow.sub_category,
        )
        .join(review, review.c.prediction_id == Prediction.id)
        .outerjoin(
            shadow, and_(shadow.prediction_id == Prediction.id, shadow.model_version == candidate)
        )
        .where(live, Prediction.needs_review | Prediction.audited)
    )
    for sweep, flagged, content, s_main, s_sub, main, sub, blind, c_main, c_sub in rows:
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
                    bool(blind),
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
    nights: int  # the nights the labelled photos come from


class FolderSource(Source, Protocol):
    data_dir: str
    photos: int  # scored photos of the folder


@dataclass(frozen=True)
class Live:
    """The live tallies as the gate reads them (``review.comparison.Live`` adds the rest)."""

    main: Paired
    sub: Paired
    nights: int


@dataclass(frozen=True)
class GateDecision:
    """Whether the comparison lets the candidate serve, and why not."""

    passed: bool
    reasons: list[str]  # why it is refused (none when it passes)
    margin: float  # how much less accurate than the serving model a candidate may be
    min_labelled: int  # blind labels of unflagged photos (or folder photos) to judge on
    judged_on: list[str]  # the sources with enough labels: "live", "folder"
    blind_labels: int = 0  # the live unflagged photos labelled blind
    # Per source: the share of its difference's weight on each kind of label.
    rests_on: dict[str, dict[str, float]] = field(default_factory=dict)


def gate(
    live: LiveSource | None, folder: FolderSource | None, *, margin: float, min_labelled: int
) -> GateDecision:
    """A non-inferiority gate: refuse a candidate that may file the nights' photos worse than
    the serving model by more than ``margin``, that is whose one-sided 95% upper bound of
    (serving accuracy - candidate accuracy), on the main or the sub level, exceeds it, on
    the live photos or on the folder. A source counts once it has ``min_labelled`` labels:
    the live photos the serving model did not flag labelled blind (the audits: they are
    most of the population, and a reviewer who sees the model's answer leans towards it),
    the folder's photos. With neither, the candidate is refused for too few blind labels."""
    reasons, judged_on, shares = [], [], {}
    blind = live.main.blind_unflagged if live else 0
    for name, found, count in (
        ("live", live, blind),
        ("folder", folder, folder and folder.photos),
    ):
        if found is None:
            continue
        shares[name] = found.sub.rests_on
        if count < min_labelled:
            continue
        judged_on.append(name)
        for paired in (found.main, found.sub):
            d = paired.difference
            if d.upper is None or d.upper > margin:
                reasons.append(
                    f"{name}: the candidate's {paired.level} accuracy may be up to "
                    f"{points(d.upper)} below the serving model's, more than the margin of "
                    f"{points(margin)} (REFUND_SORTER_GATE_MARGIN): serving "
                    f"{_percent(paired.serving)}, candidate {_percent(paired.candidate)}, "
                    f"difference {points(d.value, sign=True)} with a one-sided "
                    f"{d.confidence:.0%} upper bound of {points(d.upper, sign=True)}; "
                    f"{discordant_text(paired)}"
                )
    if not judged_on:
        reasons.append(_too_few(live, folder, blind, min_labelled))
    return GateDecision(not reasons, reasons, margin, min_labelled, judged_on, blind, shares)


def _too_few(
    live: LiveSource | None, folder: FolderSource | None, blind: int, min_labelled: int
) -> str:
    """Why no source has enough labels: how many blind labels there are, how many nights at
    the rate seen so far would give the rest, and the folder's way."""
    nights = live.nights if live else 0
    text = (
        f"too few blind labels to judge: {blind} unflagged photos labelled blind (decided "
        f"audits) in {nights} night{'' if nights == 1 else 's'}, {min_labelled} needed "
        "(REFUND_SORTER_GATE_MIN_LABELLED)"
    )
    if blind and nights:
        more = math.ceil((min_labelled - blind) / (blind / nights))
        text += f": at the {blind / nights:.3g} a night so far, about {more} more nights"
    else:
        text += ": no decided audit yet, so no rate to count nights by"
    if folder is not None:
        text += f"; {folder.photos} photos in {folder.data_dir} are too few as well"
    else:
        text += (
            f"; or a labelled folder of at least {min_labelled} photos the candidate did "
            "not learn can judge instead (refund-sorter model promote --data DIR)"
        )
    return text


def difference_text(paired: Paired, margin: float) -> str:
    """The difference the gate judges on one level, its bound and the margin, in words."""
    d = paired.difference
    return (
        f"serving - candidate accuracy {points(d.value, sign=True)}, one-sided "
        f"{d.confidence:.0%} upper bound {points(d.upper, sign=True)}, margin "
        f"{points(margin)} (on {d.labelled} labelled photos)"
    )


def discordant_text(paired: Paired) -> str:
    """The photos only one model had right, flagged and unflagged apart: pooled, the many
    flagged photos would hide what the audits show."""
    parts = []
    for flagged, name in ((False, "unflagged"), (True, "flagged")):
        strata = [s for s in paired.strata if s.flagged == flagged]
        if strata:
            serving = sum(s.serving_only for s in strata)
            candidate = sum(s.candidate_only for s in strata)
            parts.append(
                f"{name}: {serving} photos only the serving model had right, {candidate} only "
                "the candidate"
            )
    if not parts:  # a folder: one stratum
        parts.append(
            f"{paired.serving_only} photos only the serving model had right, "
            f"{paired.candidate_only} only the candidate"
        )
    return "; ".join(parts)


def describe_rests_on(shares: dict[str, float]) -> str:
    """How much of a verdict rests on each kind of label, in words."""
    names = {
        BLIND: "blind labels",
        SEEN: "labels given with the model's answer shown",
        UNLABELLED: "photos nobody labelled",
        FOLDER: "the labelled folder",
    }
    return ", ".join(f"{share:.0%} {names[kind]}" for kind, share in shares.items()) or "nothing"


def _percent(figure: Figure) -> str:
    return "n/a" if figure.value is None else f"{100 * figure.value:.1f}%"


def points(value: float | None, *, sign: bool = False) -> str:
    """A difference of accuracies in percentage points."""
    if value is None:
        return "n/a"
    return f"{100 * value:{'+' if sign else ''}.1f} points"


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
        Live(main, sub, len({sweep for sweep, _ in tallies.sizes})),
        folder,
        margin=settings.gate_margin,
        min_labelled=settings.gate_min_labelled,
    )
