"""The returns counter's commands: ``api-server`` serves its HTTP API, ``api-token`` makes,
lists and revokes the tokens its clients send.

FastAPI and uvicorn are imported inside ``api-server``, so ``api-token`` starts without them.
"""

import click

from cli.common import friendly, listen_options, serve
from refund_sorter import crud
from refund_sorter.api_tokens import NAME, new_token, token_hash
from refund_sorter.config import get_settings
from refund_sorter.db import check_schema, session_factory
from refund_sorter.errors import UserError


@click.command("api-server")
@listen_options(port=8100)
@friendly
def api_server(address: str, port: int) -> None:
    """Serve the returns counter's HTTP API on http://ADDRESS:PORT (OpenAPI page at /docs).

    One process; run more of them (behind the proxy that terminates TLS) for more clients:
    they share the database, the broker and each token's rate limit. Workers must consume
    the counter queue (celery -A worker worker -Q classify,counter). See docs/api.md.
    """
    from api.app import create_app

    serve(create_app, "returns counter API", address, port)


@click.group("api-token")
def api_token() -> None:
    """The API tokens of the returns counter's clients."""


@api_token.command("create")
@click.argument("name")
@friendly
def create(name: str) -> None:
    """Make a token for the client NAME and print it, once: only its hash is kept.

    NAME (letters, digits, '.', '_', '-'; up to 64) is recorded on every request the token
    sends. A revoked token's name may be given a new token.
    """
    if not NAME.match(name):
        raise UserError(
            f"{name!r} is not a token name: letters, digits, '.', '_' and '-', up to 64"
        )
    settings = get_settings()
    check_schema(settings.database_url)
    token = new_token()
    try:
        with session_factory(settings.database_url).begin() as session:
            crud.create_api_token(session, name=name, token_hash=token_hash(token))
    except crud.TokenNameTaken:
        raise UserError(
            f"a token named {name} exists; revoke it first (refund-sorter api-token revoke {name})"
        ) from None
    click.echo(f"token for {name} (shown once; send it as Authorization: Bearer TOKEN):", err=True)
    click.echo(token)


@api_token.command("list")
@friendly
def list_tokens() -> None:
    """List the tokens: name, when made, and when revoked."""
    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url)() as session:
        tokens = crud.api_tokens(session)
    if not tokens:
        click.echo("no API tokens (refund-sorter api-token create NAME makes one)")
        return
    click.echo(f"{'name':<24} {'created (UTC)':<17} revoked (UTC)")
    for t in tokens:
        revoked = f"{crud.as_utc(t.revoked_at):%Y-%m-%d %H:%M}" if t.revoked_at else "-"
        click.echo(f"{t.name:<24} {crud.as_utc(t.created_at):%Y-%m-%d %H:%M} {revoked}")


@api_token.command("revoke")
@click.argument("name")
@friendly
def revoke(name: str) -> None:
    """Revoke the token NAME at once: every API process refuses it from its next request."""
    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url).begin() as session:
        if not crud.revoke_api_token(session, name=name):
            raise UserError(f"no live token named {name}")
    click.echo(f"revoked the token {name}")
