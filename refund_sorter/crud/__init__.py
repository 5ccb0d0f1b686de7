"""Every row refund-sorter writes, and the queries that read them back: the only package that
writes rows. One module per concern:

- ``sweeps``: sweep runs and the one-running-sweep lock (a sweep or a promotion holds it);
- ``predictions``: a night's photos: scanned, classified, filed;
- ``reviews``: the review desk's decisions and claims;
- ``logins``: the desk's login limit;
- ``thresholds``: review thresholds set per model version;
- ``model_versions``: the model registry's rows and promotions;
- ``shadow``: a candidate model's answers from shadow runs;
- ``counter``: the returns counter's API tokens, days, photos and requests;
- ``common``: UTC times and an upsert in the session's dialect.

Functions take a session (or a session factory where they need transactions of their own)
and keyword arguments. Callers use ``crud.NAME``; each name is defined once, in its module.
"""

from refund_sorter.crud.common import (
    as_utc,
    upsert,
)
from refund_sorter.crud.counter import (
    COUNTER_TRIGGER,
    TokenNameTaken,
    api_token_name,
    api_tokens,
    claim_stalled_counter_photos,
    close_counter_days,
    count_counter_photo,
    counter_day,
    counter_days_among,
    create_api_token,
    is_counter_day,
    live_photo,
    photo_sent_by,
    postpone_counter_check,
    queued_at_counter,
    record_counter_photo,
    record_counter_request,
    revoke_api_token,
)
from refund_sorter.crud.logins import (
    count_login_failure,
    forget_login_failures,
    lock_login,
)
from refund_sorter.crud.model_versions import (
    candidate_model,
    first_serving,
    make_serving,
    model_entries,
    model_entry,
    model_version_known,
    promotion_history,
    register_model,
    retire_model,
    rollback_target,
    serving_model,
    store_model_file,
)
from refund_sorter.crud.predictions import (
    ItemResult,
    ScannedFile,
    Unmoved,
    Unreadable,
    failures_left_in_place,
    live_predictions,
    queued_paths,
    record_failures,
    record_filed,
    record_results,
    record_scan,
    record_unmoved,
    unfiled_rows,
)
from refund_sorter.crud.reviews import (
    claim_photo,
    latest_reviews,
    record_review,
    release_claims,
    undo_last_review,
)
from refund_sorter.crud.shadow import (
    ShadowAnswer,
    record_shadow,
)
from refund_sorter.crud.sweeps import (
    PROMOTION_TRIGGER,
    NoServingModel,
    SweepRunning,
    abandon_sweeps,
    begin_sweep,
    claim_stalled_sweep,
    deferred_files,
    get_sweep,
    postpone_stall_check,
    recent_sweeps,
    release_sweep_lock,
    running_sweep,
    take_sweep_lock,
)
from refund_sorter.crud.thresholds import (
    clear_review_threshold,
    review_threshold_set,
    set_review_threshold,
)

__all__ = [
    "COUNTER_TRIGGER",
    "PROMOTION_TRIGGER",
    "ItemResult",
    "NoServingModel",
    "ScannedFile",
    "ShadowAnswer",
    "SweepRunning",
    "TokenNameTaken",
    "Unmoved",
    "Unreadable",
    "abandon_sweeps",
    "api_token_name",
    "api_tokens",
    "as_utc",
    "begin_sweep",
    "candidate_model",
    "claim_photo",
    "claim_stalled_counter_photos",
    "claim_stalled_sweep",
    "clear_review_threshold",
    "close_counter_days",
    "count_counter_photo",
    "count_login_failure",
    "counter_day",
    "counter_days_among",
    "create_api_token",
    "deferred_files",
    "failures_left_in_place",
    "first_serving",
    "forget_login_failures",
    "get_sweep",
    "is_counter_day",
    "latest_reviews",
    "live_photo",
    "live_predictions",
    "lock_login",
    "make_serving",
    "model_entries",
    "model_entry",
    "model_version_known",
    "photo_sent_by",
    "postpone_counter_check",
    "postpone_stall_check",
    "promotion_history",
    "queued_at_counter",
    "queued_paths",
    "recent_sweeps",
    "record_counter_photo",
    "record_counter_request",
    "record_failures",
    "record_filed",
    "record_results",
    "record_review",
    "record_scan",
    "record_shadow",
    "record_unmoved",
    "register_model",
    "release_claims",
    "release_sweep_lock",
    "retire_model",
    "review_threshold_set",
    "revoke_api_token",
    "rollback_target",
    "running_sweep",
    "serving_model",
    "set_review_threshold",
    "store_model_file",
    "take_sweep_lock",
    "undo_last_review",
    "unfiled_rows",
    "upsert",
]
