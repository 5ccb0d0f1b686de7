"""A candidate model against the serving one, and the promotion gate that reads the result.

Two sources, the same figures where both have them:

- *live*: the nights (sweeps) started since the candidate was registered. While it is
  registered the workers run it in the serving model's shadow (``shadow_predictions``) on
  every photo flagged or audited and on a random share of the others, and record each
  photo's chance of being shadowed.
  - *agreement* (main, sub) and the candidate's *flagged share*: a Hajek ratio estimator,
    each shadowed photo weighted by 1 / its chance of being shadowed. Computed as strata of
    equal chance, each of estimated size ``n / chance``, with ``review.accuracy.stratified``
    (which gives exactly the Hajek ratio, and its stratified variance and interval); the
    photos shadowed for certain (chance 1) add no sampling error. Until one of the other
    photos is shadowed there is no estimate: it would be that of the flagged and audited
    photos alone, with no interval to show it.
  - *accuracy* of both models on the photos people labelled (the latest review not undone
    of a flagged photo, and the decided audits), each night's flagged and unflagged stratum
    weighted by its share of the photos exactly as ``review.accuracy`` weights them; and the
    paired test (``MCNEMAR``): McNemar's exact test within each stratum, combined as the
    exact binomial test on the discordant photos pooled over the strata (under the null
    each discordant photo favours either model with probability 1/2 in every stratum).
  - the serving model's flagged share is counted on every photo (no sampling); *speed* is
    the median over the shadowed photos of each model's forward time per photo.
- *folder* (``--data DIR``): both models on a labelled folder; every photo counts alike
  (Wilson's interval, the exact one under ``SMALL``), the same paired test in one stratum.

Photos whose content hash is among the candidate's training, validation or calibration
photos (its checkpoint's ``meta["content_hashes"]``) are left out of every figure, and
counted: a model must not win on photos it learned.

``gate`` is the one place that decides whether a comparison lets a candidate serve.
Torch-free: the review desk shows the live comparison.
"""

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session

from models import ItemStatus, ModelVersion, Prediction, ShadowPrediction, SweepRun
from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from registry import registry
from registry.checkpoint_taxonomy import read_payload
from review.accuracy import Estimate, Stratum, proportion, share, stratified

MCNEMAR = "McNemar's exact test, stratified by night and flag (discordant photos pooled)"
MCNEMAR_ONE = "McNemar's exact test"
HAJEK = "hajek"
CENSUS = "every photo"  # counted on every photo, not estimated from a sample
LEVELS = ("main", "sub")


# ------------------------------------------------------------------------------ statistics


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
    serving: Estimate
    candidate: Estimate
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
    photos: Iterable[Labelled], sizes: dict[tuple[int, bool], int], level: str
) -> Paired:
    """Both models' accuracy on ``level`` over the strata (night, flagged) of ``sizes``
    (each stratum's number of photos), from the labelled ``photos``, and the paired test."""
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

    def accuracy(right: str) -> Estimate:
        return stratified(
            (Stratum(s.photos, s.labelled, getattr(s, right)) for s in strata), filed=False
        )

    pooled = Discordant(sum(s.candidate_only for s in strata), sum(s.serving_only for s in strata))
    return Paired(
        level,
        accuracy("serving_right"),
        accuracy("candidate_right"),
        pooled.candidate_only,
        pooled.serving_only,
        pooled.p_value,
        MCNEMAR,
        strata,
    )


def paired_photos(serving: Sequence[bool], candidate: Sequence[bool], level: str) -> Paired:
    """Both models' accuracy on ``level`` on the same photos, each counting alike (a labelled
    folder), and McNemar's exact test."""
    pairs = [(bool(s), bool(k)) for s, k in zip(serving, candidate, strict=True)]
    d = Discordant(sum(k and not s for s, k in pairs), sum(s and not k for s, k in pairs))
    return Paired(
        level,
        proportion(sum(s for s, _ in pairs), len(pairs)),
        proportion(sum(k for _, k in pairs), len(pairs)),
        d.candidate_only,
        d.serving_only,
        d.p_value,
        MCNEMAR_ONE,
    )


@dataclass(frozen=True)
class ShadowGroup:
    """Shadowed photos that had the same chance of being shadowed, and their tallies."""

    chance: float  # of being shadowed: 1 for a photo flagged or audited, else the rate
    photos: int
    agree_main: int  # the candidate gave the serving model's main category
    agree_sub: int  # ... and its sub category
    candidate_flagged: int  # the candidate flagged it at its own threshold


def hajek(groups: Iterable[ShadowGroup], tally: str) -> Estimate:
    """The share of all photos for which ``tally`` holds, from the shadowed ones, each
    weighted by 1 / its chance: a Hajek ratio estimator, with its stratified interval."""
    strata = [
        Stratum(g.photos / g.chance, g.photos, getattr(g, tally))
        for g in groups
        if g.photos and g.chance > 0
    ]
    return replace(stratified(strata, filed=False), method=HAJEK)


def census(k: int, n: int) -> Estimate:
    """``k`` of ``n`` counted on every photo: no sampling, so no interval to draw."""
    if n == 0:
        return Estimate(None, None, None, 0, CENSUS)
    return Estimate(k / n, k / n, k / n, n, CENSUS)


def figure(estimate: Estimate) -> str:
    """An estimate with its interval, count and method; one counted on every photo, which
    has no sampling error, without an interval."""
    if estimate.method == CENSUS:
        if estimate.value is None:
            return "n/a (no photo classified)"
        return f"{100 * estimate.value:.1f}% of {estimate.n} photos (every photo counted)"
    if estimate.method == HAJEK and estimate.value is None:
        if estimate.n:
            return "n/a (none of the photos neither flagged nor audited was shadowed yet)"
        return "n/a (no photo shadowed)"
    return share(estimate)


def median(counted: Iterable[tuple[float, int]]) -> float | None:
    """The median of values each given with how many photos had it (the lower middle one
    for an even count), None without any."""
    pairs = sorted((v, n) for v, n in counted if n > 0 and v is not None)
    total = sum(n for _, n in pairs)
    if not total:
        return None
    seen, middle = 0, (total + 1) // 2
    for value, n in pairs:
        seen += n
        if seen >= middle:
            return value
    return None  # unreachable


# ------------------------------------------------------------------------------ the figures


@dataclass(frozen=True)
class LeftOut:
    """Photos left out of the figures because the candidate learned them."""

    photos: int = 0  # of the nights' classified photos
    shadowed: int = 0
    labelled: int = 0


@dataclass
class Live:
    """The candidate against the serving model on the nights since it was registered."""

    candidate: str
    serving: str
    since: str  # when the candidate was registered (ISO, UTC)
    nights: int  # sweeps of the serving model started since then
    photos: int  # their classified photos, training photos left out
    shadowed: int  # of which the candidate answered
    labelled: int  # labelled (reviewed flagged photos, decided audits) with both answers
    labelled_without_candidate: int  # labelled, but the candidate gave no answer: left out
    audits_undecided: int  # drawn and not decided yet: the figures are provisional meanwhile
    left_out: LeftOut
    training_photos_known: bool  # the candidate's checkpoint lists the photos it learned
    agreement_main: Estimate
    agreement_sub: Estimate
    main: Paired
    sub: Paired
    flagged_serving: Estimate  # counted on every photo
    flagged_candidate: Estimate  # estimated from the shadowed photos
    serving_seconds: float | None  # median forward time per photo
    candidate_seconds: float | None
    others: int = 0  # photos neither flagged nor audited: shadowed only by chance
    sampling: str = (
        "every photo the serving model flagged or that was audited, and a random share of "
        "the others (weighted by 1 / that share); accuracy from the reviewed flagged photos "
        "and the decided blind audits, each night's flagged and unflagged photos weighted "
        "by their share of the night"
    )


@dataclass
class Folder:
    """Both models on a labelled folder: every photo counts alike."""

    data_dir: str
    photos: int  # scored: readable, in both models' categories, not learned by the candidate
    left_out_training: int
    not_in_categories: dict[str, int]  # main/sub -> photos a model has no category for
    unreadable: int
    agreement_main: Estimate
    agreement_sub: Estimate
    main: Paired
    sub: Paired
    serving_threshold: float
    candidate_threshold: float
    flagged_serving: Estimate
    flagged_candidate: Estimate
    serving_precision: str
    candidate_precision: str
    serving_images_per_second: float
    candidate_images_per_second: float
    sampling: str = "every readable photo of the folder, each counting alike"


@dataclass
class Tallies:
    """What the live comparison reads from the database, training photos left out."""

    candidate: str
    serving: str
    since: str
    nights: int
    sizes: dict[tuple[int, bool], int]  # photos per stratum: (sweep, flagged by serving)
    labelled: list[Labelled]  # with both models' answers
    labelled_without_candidate: int
    audits_undecided: int
    groups: list[ShadowGroup]
    seconds: list[tuple[float, float, int]]  # (serving, candidate) per photo, and photos
    left_out: LeftOut
    training_photos_known: bool
    others: int = 0  # photos neither flagged nor audited: shadowed only by chance


def live_figures(t: Tallies) -> Live:
    """The live comparison's figures from its tallies."""
    photos = sum(t.sizes.values())
    flagged = sum(n for (_, is_flagged), n in t.sizes.items() if is_flagged)
    main, sub = (paired_strata(t.labelled, t.sizes, level) for level in LEVELS)
    # The photos shadowed only by chance stand for all the others; with none drawn yet the
    # estimates would be those of the flagged and audited photos alone, with no interval.
    drawn = any(g.photos and g.chance < 1 for g in t.groups)

    def weighted(tally: str) -> Estimate:
        if t.others and not drawn:
            return Estimate(None, None, None, sum(g.photos for g in t.groups), HAJEK)
        return hajek(t.groups, tally)

    return Live(
        candidate=t.candidate,
        serving=t.serving,
        since=t.since,
        nights=t.nights,
        photos=photos,
        shadowed=sum(g.photos for g in t.groups),
        labelled=len(t.labelled),
        labelled_without_candidate=t.labelled_without_candidate,
        audits_undecided=t.audits_undecided,
        left_out=t.left_out,
        training_photos_known=t.training_photos_known,
        agreement_main=weighted("agree_main"),
        agreement_sub=weighted("agree_sub"),
        main=main,
        sub=sub,
        others=t.others,
        flagged_serving=census(flagged, photos),
        flagged_candidate=weighted("candidate_flagged"),
        serving_seconds=median((s, n) for s, _, n in t.seconds),
        candidate_seconds=median((c, n) for _, c, n in t.seconds),
    )


def folder_figures(found, data_dir: str) -> Folder:
    """The figures of ``classifier.evaluate.answer_folder``'s answers of the models named
    ``serving`` and ``candidate`` on a labelled folder."""
    serving, candidate = found.models["serving"], found.models["candidate"]

    def right(answers, level: str) -> list[bool]:
        return [
            a.main == main and (level == "main" or a.sub == sub)
            for a, (main, sub) in zip(answers.answers, found.truth, strict=True)
        ]

    def agree(level: str) -> Estimate:
        pairs = list(zip(serving.answers, candidate.answers, strict=True))
        k = sum(s.main == c.main and (level == "main" or s.sub == c.sub) for s, c in pairs)
        return proportion(k, len(pairs))

    def flagged(answers) -> Estimate:
        return proportion(sum(a.needs_review for a in answers.answers), len(answers.answers))

    main, sub = (
        paired_photos(right(serving, level), right(candidate, level), level) for level in LEVELS
    )
    return Folder(
        data_dir=data_dir,
        photos=len(found.truth),
        left_out_training=found.left_out,
        not_in_categories=dict(found.not_in_categories),
        unreadable=len(found.unreadable),
        agreement_main=agree("main"),
        agreement_sub=agree("sub"),
        main=main,
        sub=sub,
        serving_threshold=serving.review_threshold,
        candidate_threshold=candidate.review_threshold,
        flagged_serving=flagged(serving),
        flagged_candidate=flagged(candidate),
        serving_precision=serving.precision,
        candidate_precision=candidate.precision,
        serving_images_per_second=serving.images_per_second,
        candidate_images_per_second=candidate.images_per_second,
    )


# ------------------------------------------------------------------------ the live reads

# Content hashes asked about per statement (bound parameters) when training photos are
# subtracted from a count.
HASH_CHUNK = 2000


@dataclass(frozen=True)
class Compared:
    """The two models of a comparison, from the registry."""

    candidate: ModelVersion
    serving: ModelVersion
    candidate_file: Path
    serving_file: Path


def models_compared(settings: Settings, version: str | None = None) -> Compared:
    """The registered candidate (or the registered ``version``) and the serving model, with
    their files in the model store; UserError, in plain words, when either is missing."""
    serving = registry.ensure_serving_model(settings)
    with session_factory(settings.database_url)() as session:
        if version is None:
            candidate = crud.candidate_model(session)
            if candidate is None:
                raise UserError(
                    "no candidate is registered: register one with refund-sorter model "
                    "register FILE --by NAME, and let it run in the shadow of a few nights"
                )
        else:
            candidate = crud.model_entry(session, version)
            if candidate is None:
                raise UserError(f"model {version} is not registered (refund-sorter model list)")
    if candidate.version == serving.version:
        raise UserError(f"model {candidate.version} is the serving model: nothing to compare")
    return Compared(
        candidate,
        serving,
        registry.ensure_model_file(settings, candidate.version),
        registry.ensure_model_file(settings, serving.version),
    )


def training_hashes(model_file: Path) -> set[str] | None:
    """The content hashes of every photo the model at ``model_file`` trained, validated or
    calibrated on; None when its checkpoint does not list them (trained before they were
    recorded)."""
    meta = read_payload(model_file).get("meta")
    hashes = meta.get("content_hashes") if isinstance(meta, dict) else None
    return set(hashes) if isinstance(hashes, list) else None


def _grouped(
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


def live_tallies(
    session: Session, *, candidate: str, serving: str, since: datetime, hashes: set[str] | None
) -> Tallies:
    """Read the live comparison of model ``candidate`` against ``serving``: the photos the
    serving model classified in the sweeps started at ``since`` or later, less those whose
    content hash is in ``hashes``. Counts by SQL aggregates; the labelled photos row by row."""
    known = hashes is not None
    hashes = hashes or set()
    learned = sorted(hashes)
    nights = (
        select(SweepRun.id)
        .where(SweepRun.started_at >= since, SweepRun.model_version == serving)
        .scalar_subquery()
    )
    served = and_(
        Prediction.status == ItemStatus.OK,
        # As the unique index's predicate, so that the index serves the lookups by hash.
        Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
        Prediction.model_version == serving,
        Prediction.sweep_run_id.in_(nights),
    )
    review = crud.latest_reviews()
    strata, strata_left = _grouped(
        session,
        select(
            Prediction.sweep_run_id,
            Prediction.needs_review,
            Prediction.audited,
            func.count(),
            func.count(review.c.prediction_id),
        )
        .outerjoin(review, review.c.prediction_id == Prediction.id)
        .where(served)
        .group_by(Prediction.sweep_run_id, Prediction.needs_review, Prediction.audited),
        3,
        learned,
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
    answered = and_(
        shadow.prediction_id == Prediction.id, shadow.model_version == candidate, served
    )
    same_main = shadow.main_category == Prediction.main_category
    same_sub = and_(same_main, shadow.sub_category == Prediction.sub_category)
    groups, groups_left = _grouped(
        session,
        select(
            shadow.shadow_probability,
            func.count(),
            func.sum(case((same_main, 1), else_=0)),
            func.sum(case((same_sub, 1), else_=0)),
            func.sum(case((shadow.needs_review, 1), else_=0)),
        )
        .where(answered, shadow.shadow_probability > 0)
        .group_by(shadow.shadow_probability),
        1,
        learned,
    )
    seconds, _ = _grouped(
        session,
        select(shadow.serving_seconds, shadow.candidate_seconds, func.count())
        .where(answered)
        .group_by(shadow.serving_seconds, shadow.candidate_seconds),
        2,
        learned,
    )

    labelled, without, learned_labelled = [], 0, 0
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
        .where(served, Prediction.needs_review | Prediction.audited)
    )
    for sweep, flagged, content, s_main, s_sub, main, sub, c_main, c_sub in rows:
        if content in hashes:
            learned_labelled += 1
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
    return Tallies(
        candidate=candidate,
        serving=serving,
        since=crud.as_utc(since).isoformat(timespec="seconds"),
        nights=len({sweep for sweep, _ in sizes}),
        sizes=sizes,
        labelled=labelled,
        labelled_without_candidate=without,
        audits_undecided=audits_undecided,
        groups=[ShadowGroup(chance, *counts) for (chance,), counts in groups.items()],
        seconds=[(s, c, n) for (s, c), (n,) in seconds.items()],
        left_out=LeftOut(
            photos=sum(v[0] for v in strata_left.values()),
            shadowed=sum(v[0] for v in groups_left.values()),
            labelled=learned_labelled,
        ),
        training_photos_known=known,
        others=others,
    )


def live_comparison(settings: Settings, compared: Compared) -> Live:
    """The live figures of ``compared``'s candidate against its serving model."""
    hashes = training_hashes(compared.candidate_file)
    with session_factory(settings.database_url)() as session:
        tallies = live_tallies(
            session,
            candidate=compared.candidate.version,
            serving=compared.serving.version,
            since=compared.candidate.registered_at,
            hashes=hashes,
        )
    return live_figures(tallies)


# --------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateDecision:
    """Whether the comparison lets the candidate serve, and why not."""

    passed: bool
    reasons: list[str]  # why it is refused (none when it passes)
    p_value: float  # the paired test's p below which a lower accuracy counts as worse
    min_labelled: int
    judged_on: list[str]  # the sources with enough labelled photos: "live", "folder"


def gate(
    live: Live | None, folder: Folder | None, *, p_value: float, min_labelled: int
) -> GateDecision:
    """Refuse a candidate that is worse than the serving model beyond noise on the labelled
    live photos or on the folder (accuracy lower on either level, the paired test's p-value
    below ``p_value``), or that has too few labelled photos to judge: fewer than
    ``min_labelled`` labelled live photos, unless the folder has that many photos."""
    reasons, judged_on = [], []
    for name, found in (("live", live), ("folder", folder)):
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
        if _count(found) >= min_labelled:
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


def _count(found: Live | Folder) -> int:
    return found.labelled if isinstance(found, Live) else found.photos


def _percent(estimate: Estimate) -> str:
    return "n/a" if estimate.value is None else f"{100 * estimate.value:.1f}%"
