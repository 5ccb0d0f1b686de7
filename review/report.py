"""One night's page as one self-contained HTML file, to mail or archive
(``refund-sorter report``): the desk's own night.html, with its stylesheet inlined and its
plots drawn into the page as data: URIs, no script and no link, so the file shows the same
wherever it is opened, with no desk to reach.
"""

from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from review import nights
from review.app import HERE, night_context, page_templates


def night_report(settings: Settings, sweep: int | None = None) -> tuple[nights.NightFigures, str]:
    """The night of ``sweep`` (default: the last night, the newest finished sweep) and its
    page as HTML; UserError for no such night."""
    with session_factory(settings.database_url)() as session:
        if sweep is None:
            sweep = nights.last_finished(session)
            if sweep is None:
                raise UserError(
                    "no night has finished yet: give a sweep number (refund-sorter runs)"
                )
        detail = nights.detail(session, settings, sweep)
    if detail is None:
        raise UserError(
            f"no night has the sweep number {sweep} (skipped runs are none; "
            "refund-sorter runs lists them)"
        )
    context = {
        **night_context(detail, settings, inline=True),
        "inline_css": (HERE / "static" / "review.css").read_text(encoding="utf-8"),
        "reviewer": None,
        "csrf": None,
        "flash": None,
    }
    html = page_templates(settings).env.get_template("night.html").render(context)
    return detail.night, html
