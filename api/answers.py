"""When to look at a row again: the workers announce the photos whose rows they have just
written (``refund_sorter.celery_app.announce``, Redis pub/sub on ANSWERED_CHANNEL), and
one listener per API process wakes the requests waiting for those photos.

A request registers before its photo is published, so no announcement can come between the
two. An announcement is a hint, not the answer: the request reads its row, and a request
that hears nothing (Redis away, the listener reconnecting, a worker that died between its
commit and its announcement) looks at its row every ``LOOK_ANYWAY`` seconds all the same.
"""

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio

from refund_sorter.messages import ANSWERED_CHANNEL
from refund_sorter.redact import redact

log = logging.getLogger(__name__)

LOOK_ANYWAY = 0.5  # seconds between a waiting request's looks at its row without a word
RECONNECT = 1.0  # seconds before the listener connects again after losing Redis


class Answers:
    """The requests of one API process waiting for photos, by content hash."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.waiting: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def waiter(self, content_hash: str) -> Iterator[asyncio.Event]:
        """An event set whenever a worker announces ``content_hash``, for the ``with``
        block's time."""
        event = asyncio.Event()
        self.waiting.setdefault(content_hash, set()).add(event)
        try:
            yield event
        finally:
            events = self.waiting[content_hash]
            events.discard(event)
            if not events:
                del self.waiting[content_hash]

    def heard(self, message: bytes) -> None:
        for content_hash in message.decode(errors="replace").split():
            for event in self.waiting.get(content_hash, ()):
                event.set()

    async def listen(self) -> None:
        """Wake the waiting requests as the workers announce their photos, until
        cancelled; reconnects after losing Redis."""
        while True:
            client = redis.asyncio.Redis.from_url(self.broker_url, socket_connect_timeout=5)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(ANSWERED_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.heard(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "not hearing the workers' answers (requests look at their rows every "
                    "%g s meanwhile): %s",
                    LOOK_ANYWAY,
                    redact(str(exc)),
                )
            finally:
                await client.aclose()
            await asyncio.sleep(RECONNECT)
