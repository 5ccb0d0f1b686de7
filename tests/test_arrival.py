"""The one rule that tells a file still being written from a damaged one."""

from refund_sorter.arrival import still_being_written

NOW = 1_800_000_000.0


def test_a_file_modified_within_the_settle_time_is_still_being_written():
    why = still_being_written(NOW - 5, 120, now=NOW)
    assert why == (
        "still being written (modified 5 s before it was read, less than "
        "REFUND_SORTER_SETTLE_SECONDS = 120); left in incoming/ for a later sweep"
    )
    assert still_being_written(NOW - 119.9, 120, now=NOW) is not None
    # A clock ahead of this one (a file server's) counts as recent, not as negative age.
    assert "modified 0 s before" in still_being_written(NOW + 30, 120, now=NOW)


def test_a_file_left_alone_for_the_settle_time_is_taken_as_it_is():
    assert still_being_written(NOW - 120, 120, now=NOW) is None
    assert still_being_written(NOW - 86_400, 120, now=NOW) is None
    assert still_being_written(NOW, 0, now=NOW) is None  # 0: never wait


def test_a_file_that_changed_between_two_reads_is_still_being_written_whatever_its_age():
    for settle in (0, 120):
        why = still_being_written(NOW - 86_400, settle, changed=True, now=NOW)
        assert why.startswith("still being written (its size, time or bytes changed")
        assert why.endswith("left in incoming/ for a later sweep")
