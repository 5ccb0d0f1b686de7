"""The model registry: the model versions this deployment knows, the one that serves, and
their files in the model store (REFUND_SORTER_MODEL_STORE); its rows are written by
``refund_sorter.crud``. It owns three answers (docs/training.md tells the whole story):

- Which model serves (``ensure_serving_model``): the registry's serving row; with none yet,
  the file at REFUND_SORTER_MODEL_PATH is stored and made to serve, by whichever process
  asks first (so asking may write). After that the registry wins, and
  ``model_path_disagreement`` says when that file is another model.
- Where a version's file is (``ensure_model_file``): one file per version in the store,
  written once and atomically, and filled from REFUND_SORTER_MODEL_PATH when that file is
  the version the store lacks (so asking may write).
- How the serving model changes (``register``, ``promote``, ``rollback``): a promotion
  passes the promotion gate (``registry.gate``) or is forced with a recorded reason; a
  rollback is not gated. Either is one transaction that holds the sweep lock
  (``crud.take_sweep_lock``), so it never lands inside a sweep: every sweep is one model's
  work.
"""

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from models import ModelPromotion, ModelVersion, PromotionAction, SweepRun, utcnow
from refund_sorter import crud
from refund_sorter.atomic import atomic_write
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from registry.checkpoint_taxonomy import checkpoint_figures, read_payload
from registry.version import model_version

if TYPE_CHECKING:  # the gate loads scipy: imported where a promotion runs, not at every start
    from registry.gate import FolderSource, GateDecision

log = logging.getLogger(__name__)

# Who the registry records as having registered and promoted the first serving model.
MODEL_PATH_BY = "REFUND_SORTER_MODEL_PATH"
# How often a promotion that waits for a sweep looks again.
WAIT_POLL_SECONDS = 2.0


class NotInStore(UserError):
    """The registry has no file for this version: no worker can classify for it."""


# ----------------------------------------------------------------------------- the store


def _publish(settings: Settings, source: Path, version: str) -> str:
    """Copy ``source`` (of model ``version``) into the store under its version's name, and
    return that name. Copied to a temporary name, hashed and only then renamed, so a reader
    never sees half a file and a file that changed while it was copied is refused."""
    store = Path(settings.model_store)
    name = f"{version}.pt"
    dest = store / name
    if dest.is_file() and model_version(dest) == version:
        return name
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to the model store {store}: {exc}") from None
    try:
        with atomic_write(dest, "wb", fsync=True) as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # readable by the other roles' users, whatever the umask
            copied = model_version(Path(out.name))
            if copied != version:
                raise UserError(
                    f"{source} changed while it was stored (now model {copied}); try again"
                )
    except OSError as exc:
        raise UserError(f"cannot store {source} in the model store {store}: {exc}") from None
    return name


def _model_path_version(settings: Settings) -> str | None:
    """The version of the file at REFUND_SORTER_MODEL_PATH, None if there is none."""
    try:
        return model_version(Path(settings.model_path))
    except OSError:
        return None


def _file_of(settings: Settings, entry: ModelVersion) -> Path | None:
    """The store's file of ``entry``, or None. A store that lacks it (a new store folder, or
    a version the upgrade found only on rows) is filled from REFUND_SORTER_MODEL_PATH when
    that file is this version."""
    if entry.file_name is not None:
        path = Path(settings.model_store) / entry.file_name
        if path.is_file():
            return path
    if _model_path_version(settings) != entry.version:
        return None
    payload = read_payload(settings.model_path)
    name = _publish(settings, Path(settings.model_path), entry.version)
    if entry.file_name != name:
        with session_factory(settings.database_url).begin() as session:
            figures = entry.figures or checkpoint_figures(payload)
            crud.store_model_file(session, version=entry.version, file_name=name, figures=figures)
    return Path(settings.model_store) / name


def ensure_model_file(settings: Settings, version: str) -> Path:
    """The store's file of the registered model ``version``, stored first (a file copied, its
    row updated) when the store lacks it and REFUND_SORTER_MODEL_PATH is that version;
    NotInStore when the registry does not know it or has no file for it."""
    with session_factory(settings.database_url)() as session:
        entry = crud.model_entry(session, version)
    if entry is None:
        raise NotInStore(f"model {version} is not registered")
    path = _file_of(settings, entry)
    if path is None:
        raise NotInStore(
            f"model {version} has no file in the model store {settings.model_store}: register "
            f"its file again (refund-sorter model register FILE --by NAME)"
        )
    return path


def servable(settings: Settings, version: str) -> bool:
    """Whether a worker can classify for ``version``: registered, its file in the store."""
    try:
        ensure_model_file(settings, version)
    except NotInStore:
        return False
    return True


# -------------------------------------------------------------------- the serving model


def ensure_serving_model(settings: Settings) -> ModelVersion:
    """The registry's serving model. With none yet, the file at REFUND_SORTER_MODEL_PATH is
    stored and serves from now on (a new install's first model; after the upgrade that made
    the registry, the model the sweeps used unless the file was replaced since). UserError
    when there is none and that file cannot be used."""
    sessions = session_factory(settings.database_url)
    for _ in range(2):  # a second look when another process raced this one
        with sessions() as session:
            entry = crud.serving_model(session)
        if entry is not None:
            return entry
        path = Path(settings.model_path)
        if not path.is_file():
            raise UserError(
                f"model file not found: {path} (set REFUND_SORTER_MODEL_PATH): no model serves "
                "yet, and that file is the first to serve (or register one and promote it: "
                "refund-sorter model register FILE --by NAME)"
            )
        figures = checkpoint_figures(read_payload(path))
        version = model_version(path)
        name = _publish(settings, path, version)
        try:
            with sessions.begin() as session:
                crud.first_serving(
                    session, version=version, file_name=name, figures=figures, by=MODEL_PATH_BY
                )
            log.warning("no model served yet: model %s, the file at %s, serves now", version, path)
        except IntegrityError:
            pass  # another process made a model serve first
    raise UserError("no model serves, and none could be made to serve")


def _first_serving_if_any(settings: Settings) -> None:
    """Record the first serving model if there is one to record; a registry that has none
    and no usable REFUND_SORTER_MODEL_PATH file is no error here: a model registered now can
    be promoted to be the first."""
    with contextlib.suppress(UserError):
        ensure_serving_model(settings)


def serving_version(settings: Settings) -> str:
    """The version of the model this deployment serves (``ensure_serving_model``'s, so it
    may record the first); UserError when there is none."""
    return ensure_serving_model(settings).version


def serving_file(settings: Settings) -> Path:
    """The store's file of the serving model (its categories are the review desk's), as
    ``ensure_model_file`` finds or stores it."""
    return ensure_model_file(settings, serving_version(settings))


def model_path_disagreement(settings: Settings, serving: str) -> str | None:
    """What to tell the operator when the file at REFUND_SORTER_MODEL_PATH is not the
    serving model (the registry decides; that setting only names a new install's first
    model), else None."""
    found = _model_path_version(settings)
    if found is None or found == serving:
        return None
    return (
        f"the file at REFUND_SORTER_MODEL_PATH ({settings.model_path}) is model {found}, not "
        f"the serving model {serving}: the registry decides which model serves. To serve it, "
        f"register and promote it (refund-sorter model register {settings.model_path} --by "
        "NAME, then refund-sorter model promote VERSION --by NAME)"
    )


# ------------------------------------------------------------------------------ changes


@dataclass
class Registration:
    entry: ModelVersion
    already: bool  # it was registered before (and stays as it was)
    stored: bool = False  # its file was missing from the store and is there now
    replaced: str | None = None  # the candidate it retired (register --replace)


def register(settings: Settings, source: Path, by: str, *, replace: bool = False) -> Registration:
    """Store the checkpoint at ``source`` and register it as the candidate. One candidate
    at a time: with one registered already, UserError, unless ``replace`` (then that one is
    retired, by ``by``). A version registered before stays as it is (its file stored again
    if the store lacks it or holds a damaged copy)."""
    source = Path(source)
    figures = checkpoint_figures(read_payload(source))
    version = model_version(source)
    _first_serving_if_any(settings)  # a new install's first model serves before any candidate
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        existing = crud.model_entry(session, version)
    if existing is not None:
        kept = Path(settings.model_store) / (existing.file_name or f"{version}.pt")
        intact = (
            existing.file_name is not None and kept.is_file() and model_version(kept) == version
        )
        if not intact:  # missing (the upgrade found it only on rows) or damaged
            name = _publish(settings, source, version)
            with sessions.begin() as session:
                crud.store_model_file(session, version=version, file_name=name, figures=figures)
        with sessions() as session:
            entry = crud.model_entry(session, version)
        return Registration(entry, already=True, stored=not intact)
    name = _publish(settings, source, version)
    try:
        with sessions.begin() as session:
            current = crud.candidate_model(session)
            if current is not None and not replace:
                raise UserError(
                    f"model {current.version} is the candidate (registered "
                    f"{_when(current.registered_at)} by {current.registered_by}): one candidate "
                    "at a time. Promote it or let it be judged first, or register this one "
                    "with --replace, which retires it"
                )
            replaced = current.version if current is not None else None
            if replaced is not None:
                crud.retire_model(session, version=replaced, by=by)
            entry = crud.register_model(
                session, version=version, file_name=name, figures=figures, by=by
            )
    except IntegrityError:
        raise UserError(
            "another model was registered at the same moment: see refund-sorter model list, "
            "and try again"
        ) from None
    return Registration(entry, already=False, replaced=replaced)


@dataclass
class Promotion:
    entry: ModelVersion
    change: ModelPromotion | None  # None: it served already, nothing changed
    waited: float = 0.0  # seconds spent waiting for a running sweep


class GateRefused(UserError):
    """The promotion gate refuses the candidate (``decision`` says why)."""

    def __init__(self, version: str, decision: "GateDecision"):
        self.version, self.decision = version, decision
        super().__init__(
            f"model {version} is not promoted: the gate refuses it: "
            f"{'; '.join(decision.reasons)}. Promote it anyway with a reason, which the "
            'registry records (refund-sorter model promote --force --reason "why")'
        )


def promote(
    settings: Settings,
    version: str,
    by: str,
    *,
    wait: bool = False,
    timeout: float = 3600.0,
    folder: "FolderSource | None" = None,
    force_reason: str | None = None,
    echo: Callable[[str], None] = log.info,
) -> Promotion:
    """Make the registered ``version`` serve from the next sweep on, through the promotion
    gate (``registry.gate``): compared with the serving model on the labelled live photos,
    and on ``folder`` when the caller measured both models on one, GateRefused when it is
    worse beyond noise or has too few labelled photos. ``force_reason`` promotes a refused
    version anyway and is recorded (ignored when the gate lets it pass). A version that
    serves already, or the first to serve, has nothing to be judged against. Then, while a
    sweep runs, UserError with its figures, or with ``wait`` the promotion waits (up to
    ``timeout`` seconds) for it to finish."""
    if force_reason is not None and not force_reason.strip():
        raise UserError("a promotion against the gate needs a reason, in a few words")
    with session_factory(settings.database_url)() as session:
        entry = crud.model_entry(session, version)
        known = [e.version for e in crud.model_entries(session)]
    if entry is None:
        raise UserError(
            f"unknown model version {version!r}: registered are "
            f"{', '.join(known) or 'none'} (refund-sorter model list)"
        )
    _first_serving_if_any(settings)  # a new install's first model is the one to beat
    with session_factory(settings.database_url)() as session:
        serving = crud.serving_model(session)
    reason = None
    if serving is not None and serving.version != version:
        from registry.gate import judge

        candidate_file = ensure_model_file(settings, version)
        decision = judge(settings, entry, serving, candidate_file, folder)
        if not decision.passed:
            if force_reason is None:
                raise GateRefused(version, decision)
            reason = force_reason.strip()
    return _serve(settings, entry, by, PromotionAction.PROMOTE, reason, wait, timeout, echo)


def rollback(
    settings: Settings,
    by: str,
    *,
    wait: bool = False,
    timeout: float = 3600.0,
    echo: Callable[[str], None] = log.info,
) -> Promotion:
    """Make the version that served before the serving model serve again (the one its
    promotion replaced), the way ``promote`` does but without the gate: it is the way back
    when a promoted model misbehaves."""
    serving = ensure_serving_model(settings)
    with session_factory(settings.database_url)() as session:
        target = crud.rollback_target(session)
        entry = crud.model_entry(session, target) if target else None
    if entry is None:
        raise UserError(
            f"nothing to roll back to: no model served before model {serving.version} "
            f"(serving since {_when(serving.promoted_at)}, by {serving.promoted_by})"
        )
    return _serve(settings, entry, by, PromotionAction.ROLLBACK, None, wait, timeout, echo)


def _serve(
    settings: Settings,
    entry: ModelVersion,
    by: str,
    action: str,
    reason: str | None,
    wait: bool,
    timeout: float,
    echo: Callable[[str], None],
) -> Promotion:
    """Check ``entry``'s file, then make it serve in one transaction holding the sweep lock."""
    version = entry.version
    _first_serving_if_any(settings)  # recorded as the first before it is replaced
    path = ensure_model_file(settings, version)
    found = model_version(path)
    if found != version:
        raise UserError(
            f"the model store's file {path} holds model {found}, not {version} (damaged?): "
            "register the model's file again"
        )
    sessions = session_factory(settings.database_url)
    started = time.monotonic()
    said = False
    while True:
        try:
            with sessions.begin() as session:
                lock = crud.take_sweep_lock(session)
                current = crud.serving_model(session)
                change = None
                if current is None or current.version != version:
                    if action == PromotionAction.ROLLBACK and (
                        crud.rollback_target(session) != version
                    ):
                        raise UserError("the serving model changed meanwhile: run rollback again")
                    change = crud.make_serving(
                        session, version=version, by=by, action=action, reason=reason
                    )
                # Every way out that commits releases the lock first: it must never outlive
                # this transaction.
                crud.release_sweep_lock(session, lock)
            with sessions() as session:
                served = crud.model_entry(session, version)
            return Promotion(served, change, time.monotonic() - started)
        except crud.SweepRunning:
            pass
        with sessions() as session:
            run = crud.running_sweep(session)
        if run is None:
            continue  # it finished meanwhile
        what = describe_running_sweep(run)
        if not wait:
            raise UserError(
                f"{what}. A model starts serving only between sweeps, so that each night is "
                "one model's work: run this again once the sweep has finished, or with --wait "
                "to wait for it (up to --timeout seconds)"
            )
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise UserError(f"gave up after waiting {timeout:.0f} s: {what}")
        if not said:
            echo(f"waiting up to {left:.0f} s for the running sweep to finish: {what}")
            said = True
        time.sleep(min(WAIT_POLL_SECONDS, left))


def describe_running_sweep(run: SweepRun) -> str:
    """The running sweep in one line: its model, its progress and, at its pace so far, how
    long it has to go."""
    started = crud.as_utc(run.started_at)
    elapsed = (utcnow() - started).total_seconds()
    done = run.enqueued - run.pending
    text = (
        f"sweep {run.id} is running (started {started:%Y-%m-%d %H:%M} UTC, model "
        f"{run.model_version})"
    )
    if run.enqueued == 0 and run.found == 0:
        return f"{text}, still scanning the incoming folder"
    text += f": {done} of {run.enqueued} photos classified, {run.pending} to go"
    if done > 0 and run.pending > 0 and elapsed > 0:
        left = run.pending * elapsed / done
        text += f"; at its pace so far, done in about {_duration(left)}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _when(moment) -> str:
    return "-" if moment is None else f"{crud.as_utc(moment):%Y-%m-%d %H:%M} UTC"
