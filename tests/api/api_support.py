"""Helpers of the returns counter's tests: the counter's settings for every process, and a
real ``refund-sorter api-server`` process spoken to over real HTTP (urllib)."""

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sweep_support import ServiceProcess, service_env

from refund_sorter import crud
from refund_sorter.api_tokens import new_token, token_hash
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.messages import WorkItem
from registry.registry import serving_version

REFUND_SORTER = str(Path(sys.executable).parent / "refund-sorter")
# The counter's own settings, for every process of a test (the server reads them).
COUNTER_SETTINGS = {"api_wait_seconds": 8.0, "api_rate_limit": 40, "api_max_bytes": 200_000}


def record_counter_photo(settings: Settings, path: Path, content_hash: str, when=None) -> WorkItem:
    """A counter photo stored at ``path``, recorded as the API records it, sent by the client
    ``lane-1`` (made if need be); ``when``: its day."""
    version = serving_version(settings)
    with session_factory(settings.database_url).begin() as session:
        if "lane-1" not in {t.name for t in crud.api_tokens(session)}:
            crud.create_api_token(session, name="lane-1", token_hash="f" * 64)
        day = crud.counter_day(session, model_version=version, now=when)
        crud.record_counter_photo(
            session,
            day_id=day,
            path=path,
            content_hash=content_hash,
            model_version=version,
            token="lane-1",
        )
        crud.count_counter_photo(session, day_id=day)
    return WorkItem(str(path), content_hash, version)


def counter_env(settings: Settings) -> dict[str, str]:
    """``service_env`` and the counter's settings."""
    env = service_env(settings)
    for name in ("counter_dir", "api_wait_seconds", "api_rate_limit", "api_max_bytes"):
        env[f"REFUND_SORTER_{name.upper()}"] = str(getattr(settings, name))
    return env


@dataclass
class Response:
    status: int
    body: dict | str
    headers: dict = field(default_factory=dict)

    @property
    def json(self) -> dict:
        assert isinstance(self.body, dict), self.body
        return self.body


@dataclass
class ApiServer:
    """A running ``refund-sorter api-server`` and the tokens made for it, by client name."""

    process: ServiceProcess
    url: str
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, name: str) -> str:
        """The token of client ``name``, made on first use (as ``api-token create`` does)."""
        if name not in self.tokens:
            from refund_sorter import crud
            from refund_sorter.db import session_factory

            token = new_token()
            with session_factory(self.settings.database_url).begin() as session:
                crud.create_api_token(session, name=name, token_hash=token_hash(token))
            self.tokens[name] = token
        return self.tokens[name]

    def request(
        self,
        method: str,
        path: str,
        body=None,
        client: str | None = "anna",
        headers: dict | None = None,
        timeout: float = 30,
    ) -> Response:
        """A real HTTP request (urllib); ``body``: bytes, or an iterable of bytes sent
        chunked with no length."""
        headers = dict(headers or {})
        if client is not None:
            headers.setdefault("Authorization", f"Bearer {self.token(client)}")
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, raw, got = exc.code, exc.read(), dict(exc.headers)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Response(status, parsed, got)

    def classify(self, data, client: str | None = "anna", **kwargs) -> Response:
        return self.request("POST", "/v1/classify", data, client, **kwargs)


def wait_until_listening(process: ServiceProcess, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the API server did not start\n{process.describe()}")
        time.sleep(0.2)
