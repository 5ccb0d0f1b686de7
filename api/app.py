"""The returns counter's web application: ``create_app(settings)`` builds it, and
``refund-sorter api-server`` serves it (on 127.0.0.1 unless told otherwise; TLS is the
proxy's in front of it).

``POST /v1/classify`` takes one photo (the raw body, or one file of a multipart form) and
answers its categories once a worker has classified it: the photo is checked
(``api.photos``), stored by its content in the counter's folder, recorded as a ``queued``
row of today's counter day and published on the ``counter`` queue, and the answer is the
row once it is final. A photo whose content the serving model classified already is
answered from its row at once; one that is queued already (a night's not yet classified,
another client's) is waited for rather than recorded again, so a photo is classified and
filed once. ``GET /v1/predictions/{id}`` reads a row again; ``/healthz`` says the process
is up, ``/readyz`` that the database, the broker and a worker for the counter's queue
answer; ``/metrics`` the process's own metrics (``api.metrics``); ``/docs`` the OpenAPI page.

Every ``/v1`` request needs an API token (``Authorization: Bearer TOKEN``, made with
``refund-sorter api-token create NAME``); a token sends at most REFUND_SORTER_API_RATE_LIMIT
requests a minute, counted in Redis for every API process, and reads only the rows of the
photos it sent. Every error is JSON with a plain ``detail``, never a traceback.
"""

import asyncio
import logging
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.answers import LOOK_ANYWAY, Answers
from api.metrics import ApiMetrics
from api.photos import Photo, PhotoRefused, check_photo, read_photo, store_photo
from models import ItemStatus, Prediction
from refund_sorter import celery_app, crud
from refund_sorter.api_tokens import token_hash
from refund_sorter.basic_auth import allowed_pairs, authorized
from refund_sorter.config import Settings
from refund_sorter.db import session_factory, statement_by_statement
from refund_sorter.errors import UserError
from refund_sorter.messages import COUNTER_QUEUE, WorkItem
from refund_sorter.redact import redact
from registry.registry import servable, serving_version

log = logging.getLogger(__name__)

RATE_WINDOW = 60  # seconds: REFUND_SORTER_API_RATE_LIMIT is per minute


class CounterError(Exception):
    """A request the counter answers with an error: its status, the plain reason, and the
    row the photo has when it has one (to be read later)."""

    def __init__(self, status: int, detail: str, row_id: int | None = None, **headers) -> None:
        super().__init__(detail)
        self.status, self.detail, self.row_id, self.headers = status, detail, row_id, headers


class Guess(BaseModel):
    main_category: str
    sub_category: str
    confidence: float = Field(description="The model's probability of this sub category.")


class Answer(BaseModel):
    """A photo's row: its categories once ``status`` is ``ok``."""

    id: int = Field(description="The row's id: GET /v1/predictions/{id} reads it again.")
    status: str = Field(description="queued, ok, failed or deferred.")
    main_category: str | None = None
    main_confidence: float | None = None
    sub_category: str | None = None
    sub_confidence: float | None = None
    needs_review: bool = Field(
        False, description="Below the review threshold: the review desk shows it to a person."
    )
    guesses: list[Guess] = Field(
        default_factory=list, description="The model's best sub categories, best first."
    )
    model_version: str
    content_hash: str
    error: str | None = Field(None, description="Why it failed, when it did.")
    known: bool = Field(
        False,
        description="Answered from a row that held this photo's content already (a night's "
        "or an earlier request's): not classified again.",
    )
    seconds: float | None = Field(None, description="This request's time, in seconds.")

    @classmethod
    def of(cls, row: Prediction, **extra) -> "Answer":
        guesses = [
            Guess(main_category=g["main"], sub_category=g["sub"], confidence=g["p"])
            for g in row.top_subs or []
        ]
        return cls(
            id=row.id,
            status=row.status,
            main_category=row.main_category,
            main_confidence=row.main_confidence,
            sub_category=row.sub_category,
            sub_confidence=row.sub_confidence,
            needs_review=row.needs_review,
            guesses=guesses,
            model_version=row.model_version,
            content_hash=row.content_hash,
            error=row.error,
            **extra,
        )


class Problem(BaseModel):
    detail: str
    id: int | None = Field(None, description="The photo's row, when it has one.")


ERRORS = {
    400: {"model": Problem, "description": "A body that cannot be read (multipart)."},
    401: {"model": Problem, "description": "No valid API token."},
    404: {"model": Problem, "description": "No row of this token's with this id."},
    413: {"model": Problem, "description": "The photo is larger than the limit."},
    415: {"model": Problem, "description": "Not a JPEG, PNG or WebP image."},
    422: {"model": Problem, "description": "An image that does not decode."},
    429: {"model": Problem, "description": "Over the token's requests per minute."},
    503: {"model": Problem, "description": "Database, broker or workers unavailable."},
    504: {"model": Problem, "description": "No answer in time: read the row later."},
}


# The body /v1/classify reads itself (so that its size is counted as it arrives), as the
# OpenAPI page shows it.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PHOTO_BODY = {
    "requestBody": {
        "required": True,
        "description": "One JPEG, PNG or WebP photo: the raw body (whatever its content "
        "type: the bytes decide), or the one file of a multipart form (its name is ignored).",
        "content": {
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"photo": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@dataclass
class Counter:
    """What every request of one API process shares."""

    settings: Settings
    sessions: sessionmaker[Session]
    rates: redis.Redis
    metrics: ApiMetrics
    answers: Answers

    # ------------------------------------------------------------------------- the client

    def client(self, token: str) -> str:
        """The name of the token's client, its request counted against its rate limit;
        CounterError 401 or 429."""
        name = None
        if hashed := token_hash(token):  # a token that cannot be ours is not looked up
            with statement_by_statement(self.sessions) as session:
                name = crud.api_token_name(session, token_hash=hashed)
        if not name:
            raise CounterError(401, "no valid API token", WWW_Authenticate="Bearer")
        limit = self.settings.api_rate_limit
        if limit:
            now = time.time()
            window = int(now // RATE_WINDOW)
            key = f"refund-sorter:api-rate:{name}:{window}"
            try:
                with self.rates.pipeline() as pipe:
                    used, _ = pipe.incr(key).expire(key, 2 * RATE_WINDOW).execute()
            except redis.RedisError as exc:
                raise CounterError(503, f"cannot reach Redis for the rate limit: {exc}") from None
            if used > limit:
                wait = max(1, int((window + 1) * RATE_WINDOW - now) + 1)
                raise CounterError(
                    429,
                    f"token {name} sent more than {limit} requests this minute; "
                    f"try again in {wait} s",
                    Retry_After=str(wait),
                )
        return name

    # -------------------------------------------------------------------------- a photo

    def take(self, photo: Photo, client: str) -> tuple[Prediction, bool]:
        """The row that answers ``photo`` for the serving model, and whether it was final
        already: the one that holds its content, else a new ``queued`` one for the photo
        stored in the counter's folder, published on the counter queue. The request is
        recorded for ``client`` either way."""
        try:
            version = serving_version(self.settings)
        except UserError as exc:
            raise CounterError(503, str(exc)) from None
        created = wrote = hurry = False
        with self.sessions.begin() as session:
            row = crud.live_photo(
                session, content_hash=photo.content_hash, model_version=version
            ) or crud.queued_at_counter(session, content_hash=photo.content_hash)
            if row is None:
                # The file before its row, its row before its message: a worker that takes
                # the message finds both.
                path, wrote = store_photo(photo, self.settings.counter_dir)
                day = crud.counter_day(session, model_version=version)
                try:
                    with session.begin_nested():
                        row = crud.record_counter_photo(
                            session,
                            day_id=day,
                            path=path,
                            content_hash=photo.content_hash,
                            model_version=version,
                            token=client,
                        )
                    crud.count_counter_photo(session, day_id=day)
                    created = True
                except IntegrityError:  # another request recorded it meanwhile: share it
                    row = crud.live_photo(
                        session, content_hash=photo.content_hash, model_version=version
                    )
                    if row is None:
                        why = "the photo's row changed meanwhile; send it again"
                        raise CounterError(503, why) from None
            if not created:
                crud.record_counter_request(session, prediction_id=row.id, token=client)
                hurry = row.status == ItemStatus.QUEUED and not crud.is_counter_day(
                    session, row.sweep_run_id
                )
        if not created and wrote and row.status != ItemStatus.QUEUED:
            # Written while another request's copy was being filed: not this row's file.
            path.unlink(missing_ok=True)
        if created or hurry:
            # A new photo; or a night's still queued, perhaps behind thousands of others in
            # the classify queue: handed to a counter worker too (the night's message then
            # finds it classified and leaves it be).
            item = WorkItem(row.original_path, row.content_hash, row.model_version)
            try:
                celery_app.publish([item], queue=COUNTER_QUEUE)
            except UserError as exc:
                raise CounterError(
                    503,
                    f"{exc}; the photo is recorded and will be classified once the broker is "
                    "back (the stall check publishes it again)",
                    row.id,
                ) from None
        return row, row.status != ItemStatus.QUEUED

    def row(self, row_id: int) -> Prediction:
        with statement_by_statement(self.sessions) as session:
            return session.scalar(select(Prediction).where(Prediction.id == row_id))

    async def wait(self, row: Prediction, answered: asyncio.Event, deadline: float) -> Prediction:
        """The row once it is no longer queued, looked at again whenever ``answered`` is set
        (``Answers.waiter``) and every LOOK_ANYWAY seconds; CounterError 504 at
        ``deadline``."""
        while row.status == ItemStatus.QUEUED:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CounterError(
                    504,
                    f"no answer within {self.settings.api_wait_seconds:g} s: the photo is "
                    f"queued as row {row.id}; read it later at /v1/predictions/{row.id}",
                    row.id,
                )
            with suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), timeout=min(LOOK_ANYWAY, left))
            answered.clear()
            row = await run_in_threadpool(self.row, row.id)
        return row

    # -------------------------------------------------------------------------- readiness

    def readiness(self) -> dict[str, str]:
        """What is not ready, by part (empty: all of it is)."""
        problems = {}
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            version = serving_version(self.settings)
            if not servable(self.settings, version):
                problems["model"] = f"the serving model {version} has no file in the store"
        except Exception as exc:
            problems["database"] = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
            return problems
        try:
            self.rates.ping()
        except redis.RedisError as exc:
            problems["broker"] = redact(str(exc))
            return problems
        try:
            queues = celery_app.app.control.inspect(timeout=1.0).active_queues() or {}
        except Exception as exc:
            problems["workers"] = redact(str(exc))
            return problems
        if not any(q.get("name") == COUNTER_QUEUE for qs in queues.values() for q in qs):
            problems["workers"] = (
                f"no worker consumes the {COUNTER_QUEUE} queue (a worker that cannot load the "
                "serving model stops consuming it)"
            )
        return problems


bearer = HTTPBearer(auto_error=False, description="A token from `refund-sorter api-token create`.")


def client_name(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The API token's client (a dependency of every /v1 endpoint: 401, 429)."""
    if credentials is None:
        why = "no API token: send Authorization: Bearer TOKEN"
        raise CounterError(401, why, WWW_Authenticate="Bearer")
    return request.app.state.counter.client(credentials.credentials)


Client = Annotated[str, Depends(client_name)]


def create_app(settings: Settings) -> FastAPI:
    """The returns counter's API for ``settings``."""
    counter = Counter(
        settings,
        session_factory(settings.database_url),
        redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5),
        ApiMetrics(),
        Answers(settings.broker_url),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        listener = asyncio.create_task(counter.answers.listen())
        try:
            yield
        finally:
            listener.cancel()

    app = FastAPI(
        lifespan=lifespan,
        title="refund-sorter returns counter",
        description="Classify one photo of a returned item, on the nights' workers and rows. "
        "Every /v1 request needs `Authorization: Bearer TOKEN`.",
        version="1",
    )
    app.state.counter = counter
    allowed = allowed_pairs(settings.metrics_basic_auth)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.monotonic()
        counter.metrics.in_flight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            # An answer is about one photo at one moment: no cache keeps it, and no browser
            # reads a JSON answer as anything else.
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response
        finally:
            counter.metrics.in_flight.dec()
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "other")
            counter.metrics.observe(endpoint, status, time.monotonic() - started)

    @app.post("/v1/classify", response_model=Answer, responses=ERRORS, openapi_extra=PHOTO_BODY)
    async def classify(request: Request, client: Client) -> Answer:
        """Classify one photo: the raw body (any content type) or the one file of a
        multipart form. Answered once a worker classified it, or at once when its content
        was classified already."""
        started = time.monotonic()
        deadline = started + settings.api_wait_seconds
        try:
            data = await read_photo(request, settings.api_max_bytes)
            photo = await run_in_threadpool(check_photo, data)
        except PhotoRefused as exc:
            raise CounterError(exc.status, exc.reason) from None
        # Listening before the photo is published: no answer comes in between.
        with counter.answers.waiter(photo.content_hash) as answered:
            row, known = await run_in_threadpool(counter.take, photo, client)
            row = await counter.wait(row, answered, deadline)
        if row.status != ItemStatus.OK:
            raise CounterError(
                503, f"the workers could not classify it: {row.error or row.status}", row.id
            )
        return Answer.of(row, known=known, seconds=round(time.monotonic() - started, 4))

    @app.get("/v1/predictions/{prediction_id}", response_model=Answer, responses=ERRORS)
    def prediction(prediction_id: int, client: Client) -> Answer:
        """A row of a photo this token sent: its answer, or ``queued`` while it waits."""
        with counter.sessions() as session:
            row = crud.photo_sent_by(session, prediction_id=prediction_id, token=client)
        if row is None:
            raise CounterError(404, f"no photo {prediction_id} sent with this token")
        return Answer.of(row, known=True)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        """The process answers."""
        return "ok"

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when the database, the broker and a worker for the counter queue answer,
        and the serving model has its file: 200, else 503 naming what is not."""
        problems = await run_in_threadpool(counter.readiness)
        body = {"ready": not problems, "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if allowed and not authorized(request.headers.get("authorization", ""), allowed):
            return PlainTextResponse(
                "401: this endpoint needs a user and password (basic auth)",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="refund-sorter metrics"'},
            )
        return Response(generate_latest(counter.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_exception_handler(CounterError, _counter_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_away)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _problem(status: int, detail: str, row_id: int | None = None, headers=None) -> JSONResponse:
    body = {"detail": detail} if row_id is None else {"detail": detail, "id": row_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _counter_error(_request: Request, exc: CounterError) -> JSONResponse:
    headers = {name.replace("_", "-"): value for name, value in exc.headers.items()}
    return _problem(exc.status, exc.detail, exc.row_id, headers)


def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return _problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
    )
    return _problem(422, detail)


def _database_away(_request: Request, exc: OperationalError) -> JSONResponse:
    log.error("the database does not answer: %s", redact(str(exc.orig)))
    return _problem(503, "the database does not answer; try again shortly")


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed", exc_info=exc)
    return _problem(500, f"internal error ({type(exc).__name__}); the API's log says more")


def app_from_environment() -> FastAPI:
    """The app for the settings in the environment (uvicorn's factory)."""
    from refund_sorter.config import get_settings

    return create_app(get_settings())
