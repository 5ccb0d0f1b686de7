"""``api.answers.Answers``: a worker's word wakes the requests waiting for its photos, and
only those, and a request that has its answer leaves nothing behind."""

import asyncio

from api.answers import Answers


def test_a_word_wakes_the_requests_waiting_for_its_photos_and_no_other():
    async def scenario():
        answers = Answers("redis://127.0.0.1:1/0")
        with (
            answers.waiter("a" * 64) as first,
            answers.waiter("a" * 64) as second,
            answers.waiter("b" * 64) as other,
        ):
            answers.heard(f"{'c' * 64} {'a' * 64}".encode())
            assert first.is_set() and second.is_set()
            assert not other.is_set()
        assert answers.waiting == {}

    asyncio.run(scenario())
