"""The review desk's web application: ``create_app(settings)`` builds it, and
``refund-sorter review-server`` serves it (on 127.0.0.1 unless told otherwise).

Pages: ``/login``; ``/review``, the next photo of a selection (night, predicted category);
``/review/{id}``, one photo with its history, to decide again; ``/undo``, which takes back
the reviewer's last decision; ``/progress``, the team's day; ``/accuracy``, the live
accuracy the decisions measure; ``/nights``, the last nights at a glance, and
``/nights/{id}``, one night in full, with their plots as SVG images of their own
(``/nights/plots/<name>.svg``, ``/nights/{id}/plots/<name>.svg``: the content policy allows
no inline style, so no inline SVG); ``/models``, the registered model versions and the
candidate's comparison with the serving model; ``/photos/{id}``, the photo
file itself, served only from inside the processed, incoming, failed and counter folders.
Everything but the login page and ``/healthz`` needs a logged-in reviewer, and every form
carries the session's CSRF token.

A photo shown to a reviewer is claimed for them (REFUND_SORTER_REVIEW_CLAIM_SECONDS): no
other reviewer is shown it or may decide it until the claim ends.
"""

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware

from models import ItemStatus, Prediction, SweepRun, utcnow
from refund_sorter import crud
from refund_sorter.audit import shown_blind
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from refund_sorter.files import inside
from refund_sorter.images import UnreadableImage, sniff
from refund_sorter.taxonomy import Taxonomy
from registry.checkpoint_taxonomy import read_taxonomy
from registry.gate import describe_rests_on, gate, points
from registry.registry import serving_file
from review import accuracy, auth, comparison, nights, plots, progress, queue
from review.auth import authenticate, csrf_token, csrf_valid, reviewers, session_secret

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_SECONDS = 12 * 3600  # a working day; then the reviewer logs in again
CLAIM_TRIES = 20  # photos tried in turn when other reviewers claim them at the same moment
SECURITY_HEADERS = {
    # Scripts, styles and images from the desk itself only: no inline script can run.
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; "
    "style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class LoginRequired(Exception):
    pass


class PageError(Exception):
    """A request the desk refuses, with the plain message the reviewer reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Desk:
    settings: Settings
    sessions: sessionmaker[Session]
    taxonomy: Taxonomy
    accounts: dict[str, str]  # reviewer -> password hash
    templates: Jinja2Templates

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    def local(self, moment: datetime) -> datetime:
        """A time from the database, in REFUND_SORTER_TIMEZONE."""
        return crud.as_utc(moment).astimezone(self.zone)

    @property
    def categories(self) -> list[tuple[str, str]]:
        """Every (main, sub) of the model, main by main."""
        tax = self.taxonomy
        pairs = [(tax.main[tax.sub_to_main[i]], sub) for i, sub in enumerate(tax.sub)]
        return sorted(pairs, key=lambda pair: (tax.main.index(pair[0]), pair[1]))

    def category(self, value: str, *, main_alone: bool = False) -> tuple[str, str | None]:
        """``main/sub`` (or, with ``main_alone``, ``main``) as a pair, if the model has it."""
        main, _, sub = value.partition("/")
        if main_alone and not sub and main in self.taxonomy.main:
            return main, None
        if self.taxonomy.index_of(main, sub) is None:
            raise PageError(
                400,
                f"{value!r} is not one of the model's categories; choose one from the list "
                f"({', '.join(f'{m}/{s}' for m, s in self.categories)}).",
            )
        return main, sub

    def photo_file(self, row: Prediction) -> Path | None:
        """The photo's file, resolved, if it lies inside the processed, incoming, failed or
        counter folder: a row never makes the desk serve anything else."""
        path = row.final_path or row.original_path
        s = self.settings
        for folder in (s.processed_dir, s.incoming_dir, s.failed_dir, s.counter_dir):
            found = inside(path, folder)
            if found is not None and found.is_file():
                return found
        return None


def page_templates(settings: Settings) -> Jinja2Templates:
    """The desk's templates, with the filters they use; ``review.report`` renders them too."""
    templates = Jinja2Templates(HERE / "templates")
    zone = ZoneInfo(settings.timezone)
    templates.env.filters["local"] = lambda moment: (
        crud.as_utc(moment).astimezone(zone).strftime("%Y-%m-%d %H:%M")
    )
    templates.env.filters["percent"] = nights.percent
    templates.env.filters["duration"] = nights.duration_words
    templates.env.filters["interval"] = nights.interval_words
    templates.env.filters["rate"] = nights.rate
    templates.env.globals["share"] = accuracy.share
    return templates


def create_app(settings: Settings) -> FastAPI:
    """The review desk for ``settings``; UserError when it lacks reviewers, a session key
    (outside development) or a serving model with a readable file (for the categories).
    The settings are checked first: only a desk that will start asks which model serves."""
    accounts = reviewers(settings)
    secret = session_secret(settings)
    desk = Desk(
        settings,
        session_factory(settings.database_url),
        read_taxonomy(serving_file(settings)),
        accounts,
        page_templates(settings),
    )
    app = FastAPI(title="refund-sorter review desk", docs_url=None, redoc_url=None)
    app.openapi_url = None
    app.state.desk = desk
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="refund_sorter_review",
        max_age=SESSION_SECONDS,
        same_site="lax",
        https_only=settings.review_https,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(PageError, _error_page)
    app.add_exception_handler(HTTPException, _error_page)
    app.add_exception_handler(RequestValidationError, _error_page)
    return app


def _to_login(request: Request, _exc: LoginRequired) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def _error_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, PageError):
        status, message = exc.status, exc.message
    elif isinstance(exc, RequestValidationError):
        status = 400
        message = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
    else:
        status, message = exc.status_code, str(exc.detail)
    return render(request, "error.html", {"message": message}, status)


def render(request: Request, template: str, context: dict, status: int = 200) -> Response:
    desk: Desk = request.app.state.desk
    context = {
        "reviewer": request.session.get("reviewer"),
        "csrf": csrf_token(request.session),
        "flash": request.session.pop("flash", None),
        **context,
    }
    return desk.templates.TemplateResponse(request, template, context, status_code=status)


router = APIRouter()


def get_desk(request: Request) -> Desk:
    return request.app.state.desk


DeskDep = Annotated[Desk, Depends(get_desk)]


def logged_in(request: Request, desk: DeskDep) -> str:
    """The reviewer of this session; one no longer in REFUND_SORTER_REVIEWERS is out."""
    name = request.session.get("reviewer")
    if name not in desk.accounts:
        raise LoginRequired()
    return name


async def checked_form(request: Request) -> FormData:
    """The posted form, if it carries this session's CSRF token."""
    form = await request.form()
    if not csrf_valid(request.session, form.get("csrf")):
        raise PageError(
            403,
            "This form is out of date or did not come from the review desk: "
            "reload the page and try again.",
        )
    return form


Reviewer = Annotated[str, Depends(logged_in)]
CheckedForm = Annotated[FormData, Depends(checked_form)]


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never send a reviewer who just logged in elsewhere.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/review"


@router.get("/healthz", include_in_schema=False)
def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/review", status_code=303)


@router.get("/login")
def login_page(
    request: Request, target: Annotated[str, Query(alias="next")] = "/review"
) -> Response:
    return render(request, "login.html", {"next": _safe_next(target), "error": None})


@router.post("/login")
def login(
    request: Request,
    form: CheckedForm,
    desk: DeskDep,
) -> Response:
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    address = auth.client_address(request, desk.settings.review_trust_proxy)
    with desk.sessions() as session:
        wait = auth.login_wait(session, name, address, utcnow())
    if wait:
        # Refused before the password is looked at: a locked account tells nothing, not even
        # whether this password was the right one.
        log.warning(
            "refused a login to the review desk as %r from %s: too many failed logins, "
            "locked for %d s more",
            name,
            address,
            wait,
        )
        minutes = -(-wait // 60)
        error = (
            "Too many failed logins for this name or from this address. "
            f"Try again in {minutes} minute{'s' if minutes > 1 else ''}."
        )
        response = render(request, "login.html", {"next": target, "error": error}, 429)
        response.headers["Retry-After"] = str(wait)
        return response
    ok = authenticate(desk.accounts, name, password)
    with desk.sessions.begin() as session:
        if ok:
            auth.forget_failed_logins(session, name)
        else:
            auth.count_failed_login(session, name, address)
    if not ok:
        log.warning("failed login to the review desk as %r from %s", name, address)
        context = {"next": target, "error": "Wrong name or password."}
        return render(request, "login.html", context, 401)
    request.session.clear()  # a fresh session (and CSRF token) for the reviewer
    request.session["reviewer"] = name
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
def logout(request: Request, _form: CheckedForm, desk: DeskDep) -> RedirectResponse:
    if reviewer := request.session.get("reviewer"):
        with desk.sessions.begin() as session:
            crud.release_claims(session, reviewer=reviewer)  # back to the others at once
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _selection(desk: Desk, sweep: int | None, category: str, order: str) -> queue.Selection:
    main, sub = desk.category(category, main_alone=True) if category else (None, None)
    if order not in queue.ORDERS:
        raise PageError(
            400, f"{order!r} is not an order of the queue: {' or '.join(queue.ORDERS)}."
        )
    return queue.Selection(sweep=sweep, main=main, sub=sub, order=order)


def _held_elsewhere(desk: Desk, session: Session, photo: Prediction) -> PageError:
    claim = queue.claim_on(session, photo.id)
    until = f"{desk.local(claim.expires_at):%H:%M} ({desk.settings.timezone})" if claim else "now"
    who = claim.reviewer if claim else "another reviewer"
    return PageError(
        409,
        f"{who} is deciding {photo.file_name} right now: the desk holds it for them until "
        f"{until}, and shows it to nobody else meanwhile. Nothing was saved; go on with the "
        "next photo.",
    )


def _claim(desk: Desk, session: Session, photo: Prediction, reviewer: str) -> bool:
    """Hold ``photo`` for ``reviewer`` and let go of the one they held before."""
    seconds = desk.settings.review_claim_seconds
    if crud.claim_photo(session, prediction_id=photo.id, reviewer=reviewer, seconds=seconds):
        crud.release_claims(session, reviewer=reviewer, keep=photo.id)
        return True
    return False


def _page(
    request: Request,
    desk: Desk,
    session: Session,
    photo: Prediction | None,
    selection: queue.Selection,
    category: str,
    reviewer: str,
) -> Response:
    blind = _blind(desk, photo, category)
    context = {
        "photo": photo,
        "selection": selection,
        "category": category,
        "left": queue.count_left(session, selection),
        "nights": queue.nights(session),
        "categories": desk.categories,
        "mains": desk.taxonomy.main,
        "history": queue.history(session, photo.id) if photo else [],
        "recent": queue.recent_reviews(session),
        "alternatives": _alternatives(photo, blind),
        "blind": blind,
        "orders": queue.ORDERS,
        "night_of": session.get(SweepRun, photo.sweep_run_id) if photo else None,
        "undoable": queue.last_decision(session, reviewer),
        "claim_minutes": round(desk.settings.review_claim_seconds / 60),
    }
    return render(request, "review.html", context)


def _blind(desk: Desk, photo: Prediction | None, category: str) -> bool:
    """Whether the desk shows ``photo`` without the model's answer (an audit, or a flagged
    photo drawn to be shown blind), and records its decision as blind. A flagged photo
    reached through a main-category filter is not: the filter told the reviewer the model's
    main category (audits never come through it)."""
    if photo is None or (category and not photo.audited):
        return False
    return shown_blind(
        photo.content_hash,
        photo.model_version,
        desk.settings.audit_seed,
        desk.settings.blind_flagged_share,
        audited=photo.audited,
        needs_review=photo.needs_review,
    )


def _alternatives(photo: Prediction | None, blind: bool) -> list[dict]:
    """The next best sub categories after the decision (none for rows from before they were
    stored, and none for a photo shown blind: the reviewer decides it without them)."""
    if photo is None or blind or not photo.top_subs:
        return []
    decided = (photo.main_category, photo.sub_category)
    return [t for t in photo.top_subs if (t["main"], t["sub"]) != decided]


@router.get("/review")
def review_queue(
    request: Request,
    reviewer: Reviewer,
    desk: DeskDep,
    sweep: int | None = None,
    category: str = "",
    order: str = queue.DOUBT,
    after: int | None = None,
) -> Response:
    selection = _selection(desk, sweep, category, order)
    with desk.sessions.begin() as session:
        skipped = session.get(Prediction, after) if after is not None else None
        for _ in range(CLAIM_TRIES):
            now = utcnow()
            photo = queue.next_photo(session, selection, reviewer=reviewer, now=now, after=skipped)
            # Claimed by someone else since the query? The next query leaves it out.
            if photo is None or _claim(desk, session, photo, reviewer):
                return _page(request, desk, session, photo, selection, category, reviewer)
    raise PageError(503, "Other reviewers took every photo offered meanwhile: reload the page.")


@router.get("/review/{prediction_id}")
def review_one(
    request: Request,
    prediction_id: int,
    reviewer: Reviewer,
    desk: DeskDep,
    sweep: int | None = None,
    category: str = "",
    order: str = queue.DOUBT,
) -> Response:
    selection = _selection(desk, sweep, category, order)
    with desk.sessions.begin() as session:
        photo = session.get(Prediction, prediction_id)
        if photo is None or photo.status != ItemStatus.OK:
            raise PageError(404, f"No classified photo has the number {prediction_id}.")
        if not _claim(desk, session, photo, reviewer):
            raise _held_elsewhere(desk, session, photo)
        return _page(request, desk, session, photo, selection, category, reviewer)


@router.post("/review/{prediction_id}")
def decide(
    request: Request,
    prediction_id: int,
    form: CheckedForm,
    reviewer: Reviewer,
    desk: DeskDep,
) -> RedirectResponse:
    main, sub = desk.category(str(form.get("decision", "")))
    category = str(form.get("category", ""))
    sweep = str(form.get("sweep", ""))
    order = str(form.get("order", ""))
    with desk.sessions.begin() as session:
        photo = session.get(Prediction, prediction_id)
        if photo is None or photo.status != ItemStatus.OK:
            raise PageError(404, f"No classified photo has the number {prediction_id}.")
        # The claim, taken again in the decision's own transaction: a claim that ran out
        # unclaimed is this reviewer's again, one another reviewer holds refuses the decision.
        if not _claim(desk, session, photo, reviewer):
            raise _held_elsewhere(desk, session, photo)
        crud.record_review(
            session,
            prediction_id=prediction_id,
            reviewer=reviewer,
            main_category=main,
            sub_category=sub,
            blind=_blind(desk, photo, category),
        )
        crud.release_claims(session, reviewer=reviewer)
        name = photo.file_name
    request.session["flash"] = f"Saved {main} / {sub} for {name}."
    return RedirectResponse(f"/review?{_filters(sweep, category, order)}", status_code=303)


def _filters(sweep: str, category: str, order: str) -> str:
    if order == queue.DOUBT:
        order = ""  # the default
    pairs = (("sweep", sweep), ("category", category), ("order", order))
    return urlencode({k: v for k, v in pairs if v})


@router.post("/undo")
def undo(form: CheckedForm, request: Request, reviewer: Reviewer, desk: DeskDep) -> Response:
    """Take back the reviewer's last decision and show its photo again, to decide anew."""
    with desk.sessions.begin() as session:
        undone = crud.undo_last_review(session, reviewer=reviewer)
        photo = session.get(Prediction, undone.prediction_id) if undone else None
    filters = _filters(
        str(form.get("sweep", "")), str(form.get("category", "")), str(form.get("order", ""))
    )
    if photo is None:
        request.session["flash"] = "You have no decision left to undo."
        return RedirectResponse(f"/review?{filters}", status_code=303)
    request.session["flash"] = (
        f"Undone: {undone.main_category} / {undone.sub_category} for {photo.file_name}. "
        "Decide it again."
    )
    return RedirectResponse(f"/review/{photo.id}?{filters}", status_code=303)


@router.get("/progress")
def progress_page(request: Request, reviewer: Reviewer, desk: DeskDep) -> Response:
    """Each reviewer's day so far, and what is left for the team."""
    now = utcnow()
    start, end = progress.day_bounds(desk.zone, now)
    with desk.sessions() as session:
        oldest = queue.oldest_undecided(session)
        context = {
            "day": desk.local(now).date(),
            "zone": desk.settings.timezone,
            "reviewers": progress.reviewers_on(session, start, end),
            "nights": [n for n in queue.nights(session) if n.left],
            "oldest": oldest,
            "oldest_age": progress.how_long(
                (now - crud.as_utc(oldest.classified_at)).total_seconds()
            )
            if oldest
            else None,
        }
        return render(request, "progress.html", context)


@router.get("/accuracy")
def accuracy_page(request: Request, reviewer: Reviewer, desk: DeskDep) -> Response:
    """The live accuracy, per night and over the last nights, measured by the decisions."""
    with desk.sessions() as session:
        found = accuracy.report(session)
    return render(request, "accuracy.html", {"report": found, "share": accuracy.share})


def svg(data: bytes) -> Response:
    return Response(data, media_type="image/svg+xml")


@router.get("/nights")
def nights_page(request: Request, reviewer: Reviewer, desk: DeskDep) -> Response:
    """Did last night work, and is it still right? The last nights, with their trends."""
    with desk.sessions() as session:
        found = nights.recent(session, desk.settings)
    context = {
        "nights": found,
        "headline": nights.headline(found, desk.settings, utcnow()),
        "trends": plots.TRENDS,
        "zone": desk.settings.timezone,
        "failed_warning": desk.settings.nights_failed_warning,
        "baseline_nights": desk.settings.drift_baseline_nights,
        "psi_threshold": desk.settings.drift_psi_threshold,
        "ks_threshold": desk.settings.drift_ks_threshold,
        "p_value": desk.settings.drift_p_value,
    }
    return render(request, "nights.html", context)


# Before /nights/{sweep}, which would take "plots" for a sweep's number.
@router.get("/nights/plots/{name}.svg")
def nights_plot(name: str, reviewer: Reviewer, desk: DeskDep) -> Response:
    if name not in plots.TRENDS:
        raise PageError(404, f"No plot {name!r}: the trends are {', '.join(plots.TRENDS)}.")
    with desk.sessions() as session:
        found = nights.recent(session, desk.settings, drift=name == "drift")
    return svg(plots.trend(name, found, desk.settings))


def night_detail(desk: Desk, sweep: int) -> nights.NightDetail:
    with desk.sessions() as session:
        found = nights.detail(session, desk.settings, sweep)
    if found is None:
        raise PageError(404, f"No night has the sweep number {sweep} (skipped runs are none).")
    return found


def night_context(detail: nights.NightDetail, settings: Settings, *, inline: bool) -> dict:
    """What night.html shows; ``inline``: as one self-contained file (``review.report``),
    its plots drawn into the page as data: URIs instead of linked, and no links."""
    sweep = detail.night.sweep

    def plot_src(name: str) -> str:
        if not inline:
            return f"/nights/{sweep}/plots/{name}.svg"
        data = base64.b64encode(plots.night_plot(name, detail, settings)).decode("ascii")
        return f"data:image/svg+xml;base64,{data}"

    return {
        "detail": detail,
        "n": detail.night,
        "summary": nights.summary(detail.night),
        "warnings": nights.concerns(detail.night, settings),
        "plots": plots.NIGHT_PLOTS,
        "plot_src": plot_src,
        "inline": inline,
        "zone": settings.timezone,
        "psi_threshold": settings.drift_psi_threshold,
        "ks_threshold": settings.drift_ks_threshold,
        "p_value": settings.drift_p_value,
    }


@router.get("/nights/{sweep}")
def night_page(request: Request, sweep: int, reviewer: Reviewer, desk: DeskDep) -> Response:
    """One night in full: counts, failures by reason, mix against its baseline, confidences,
    throughput, model version."""
    context = night_context(night_detail(desk, sweep), desk.settings, inline=False)
    return render(request, "night.html", context)


@router.get("/nights/{sweep}/plots/{name}.svg")
def night_plot(sweep: int, name: str, reviewer: Reviewer, desk: DeskDep) -> Response:
    if name not in plots.NIGHT_PLOTS:
        raise PageError(404, f"No plot {name!r}: a night has {', '.join(plots.NIGHT_PLOTS)}.")
    return svg(plots.night_plot(name, night_detail(desk, sweep), desk.settings))


@router.get("/models")
def models_page(request: Request, reviewer: Reviewer, desk: DeskDep) -> Response:
    """The registered model versions and their roles, and the candidate against the serving
    model on the live nights since it was registered, as `refund-sorter model compare`."""
    settings = desk.settings
    with desk.sessions() as session:
        entries = crud.model_entries(session)
    live = decision = compared = None
    try:
        compared = comparison.models_compared(settings)
        live = comparison.live_comparison(settings, compared)
        decision = gate(
            live, None, margin=settings.gate_margin, min_labelled=settings.gate_min_labelled
        )
        missing = None
    except UserError as exc:
        missing = str(exc)
    context = {
        "entries": entries,
        "compared": compared,
        "live": live,
        "decision": decision,
        "missing": missing,
        "figure": comparison.figure,
        "points": points,
        "rests_on": describe_rests_on,
    }
    return render(request, "models.html", context)


@router.get("/photos/{prediction_id}")
def photo(
    prediction_id: int,
    reviewer: Reviewer,
    desk: DeskDep,
) -> FileResponse:
    with desk.sessions() as session:
        row = session.get(Prediction, prediction_id)
    path = desk.photo_file(row) if row is not None else None
    if path is None:
        raise PageError(404, "No such photo.")
    try:
        media_type = Image.MIME.get(sniff(path), "application/octet-stream")
    except UnreadableImage:
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private"})
