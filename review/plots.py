"""The Nights pages' plots, drawn by matplotlib as SVG: small trend plots of the last nights
(one figure each, sparkline style) and one night's status bars, category mix against its
baseline, confidence histogram and throughput.

Each plot is a ``matplotlib.figure.Figure`` of its own, saved straight to SVG bytes: no
pyplot, so no global figure state, and nothing shared between the desk's request threads.
Text stays readable at the size the pages show it (7.5 points and up), and the colours are
the desk's own (review/static/review.css).
"""

import io
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from models import ItemStatus
from refund_sorter.config import Settings
from review.nights import KNOWN, LEVELS, STATUSES, NightDetail, NightFigures, rate

# The colours of review/static/review.css (:root), so that plots and page read as one.
COLOURS = {
    "ink": "#1d2433",
    "muted": "#5d6678",
    "line": "#d9dee8",
    "accent": "#1f6feb",
    "ok": "#1a7f37",
    "bad": "#b42318",
    "warn": "#9a6700",
}
STATUS_COLOURS = {
    ItemStatus.OK: COLOURS["ok"],
    ItemStatus.FAILED: COLOURS["bad"],
    ItemStatus.DEFERRED: COLOURS["warn"],
    ItemStatus.QUEUED: COLOURS["muted"],
    KNOWN: COLOURS["line"],
}
TITLE, SMALL = 9.5, 7.5  # points
TREND_SIZE = (3.4, 1.3)  # inches, at DPI: 340 x 130 pixels
NIGHT_WIDTH = 5.6
TICK_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720)
DPI = 100

# The trend plots of the Nights page, in the order the page shows them.
TRENDS = {
    "photos": "Photos",
    "failed": "Failed share",
    "flagged": "Flagged share",
    "duration": "Duration",
    "throughput": "Photos per second",
    "accuracy": "Audit accuracy, sub",
    "drift": "Drift (PSI)",
}
# One night's plots.
NIGHT_PLOTS = {
    "status": "Photos by status",
    "mix-main": "Main category mix, night against baseline",
    "mix-sub": "Sub category mix, night against baseline",
    "confidence": "Confidence of the classified photos",
    "throughput": "Photos classified over the night",
}


def _svg(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No date in the file: the same figures give the same bytes.
    fig.savefig(buffer, format="svg", metadata={"Date": None}, facecolor="white")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, facecolor="white", layout="constrained")


def _quiet(ax: Axes) -> None:
    """Sparkline axes: no box, muted small ticks."""
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(COLOURS["line"])
    ax.tick_params(labelsize=SMALL, colors=COLOURS["muted"], length=2)
    ax.set_facecolor("white")


def _nothing(ax: Axes, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=SMALL + 1, color=COLOURS["muted"])


def _head(ax: Axes, title: str, latest: str, colour: str = COLOURS["ink"]) -> None:
    ax.set_title(title, loc="left", fontsize=TITLE, color=COLOURS["ink"], fontweight="bold")
    ax.set_title(latest, loc="right", fontsize=TITLE, color=colour)


def _value(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _last(values: list, format_: Callable) -> str:
    """The newest value, as the trend's headline; '' without one."""
    return "" if values[-1] is None else f"last {format_(values[-1])}"


def _percent(v: float) -> str:
    return f"{100 * v:.1f}%"


def trend(name: str, nights: list[NightFigures], settings: Settings) -> bytes:
    """One of TRENDS over ``nights`` (newest first, as ``review.nights.recent`` gives them),
    drawn oldest to newest; a night without the figure leaves a gap."""
    fig = _figure(*TREND_SIZE)
    ax = fig.add_subplot()
    _quiet(ax)
    title = TRENDS[name]
    if not nights:
        _head(ax, title, "")
        _nothing(ax, "no night yet")
        return _svg(fig)
    nights = nights[::-1]
    x = np.arange(len(nights))
    ax.set_xticks([x[0], x[-1]] if len(x) > 1 else [x[0]])
    ax.set_xticklabels(
        [f"{nights[0].date:%m-%d}", f"{nights[-1].date:%m-%d}"][: len(ax.get_xticks())]
    )
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(3, min_n_ticks=2))
    ax.grid(axis="y", color=COLOURS["line"], linewidth=0.6)
    ax.set_axisbelow(True)
    DRAW[name](ax, x, nights, settings, title)
    return _svg(fig)


def _photos(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    bottom = np.zeros(len(nights))
    for status in (ItemStatus.OK, ItemStatus.FAILED, ItemStatus.DEFERRED, ItemStatus.QUEUED):
        counts = np.array([n.photos[status] for n in nights], dtype=float)
        ax.bar(x, counts, bottom=bottom, width=0.75, color=STATUS_COLOURS[status], label=status)
        bottom += counts
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _head(ax, title, f"last {nights[-1].settled:,}")


def _share_line(ax: Axes, x, values: list, colour: str, warn_above: float | None = None) -> None:
    y = _value(values)
    ax.plot(x, y, color=colour, linewidth=1.4, marker="o", markersize=2.5)
    if warn_above is not None:
        ax.axhline(warn_above, color=COLOURS["bad"], linewidth=0.8, linestyle="--")
        high = y > warn_above
        ax.plot(x[high], y[high], "o", color=COLOURS["bad"], markersize=4)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))


def _failed(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    values = [n.failed_share for n in nights]
    warn = settings.nights_failed_warning
    _share_line(ax, x, values, COLOURS["bad"], warn_above=warn)
    high = values[-1] is not None and values[-1] > warn
    _head(ax, title, _last(values, _percent), COLOURS["bad"] if high else COLOURS["ink"])


def _flagged(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    values = [n.flagged_share for n in nights]
    _share_line(ax, x, values, COLOURS["accent"])
    _head(ax, title, _last(values, _percent))


def _duration(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    values = [None if n.duration_seconds is None else n.duration_seconds / 60 for n in nights]
    ax.bar(x, _value(values), width=0.75, color=COLOURS["accent"])
    ax.set_ylabel("minutes", fontsize=SMALL, color=COLOURS["muted"])
    _head(ax, title, _last(values, lambda v: f"{v:,.0f} min"))


def _throughput(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    values = [n.images_per_second for n in nights]
    ax.plot(x, _value(values), color=COLOURS["accent"], linewidth=1.4, marker="o", markersize=2.5)
    ax.set_ylim(bottom=0)
    _head(ax, title, _last(values, lambda v: f"{rate(v)}/s"))


def _accuracy(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    estimates = [n.accuracy.unflagged_sub if n.accuracy else None for n in nights]
    known = [(i, e) for i, e in zip(x, estimates, strict=True) if e and e.value is not None]
    if known:
        at = np.array([i for i, _ in known])
        value = np.array([e.value for _, e in known])
        low, high = np.array([e.low for _, e in known]), np.array([e.high for _, e in known])
        ax.vlines(at, low, high, color=COLOURS["line"], linewidth=3)
        ax.plot(at, value, "o", color=COLOURS["ok"], markersize=3.5)
        ax.set_ylim(max(0.0, float(low.min()) - 0.02), 1.03)  # a point at 100% shows whole
    else:
        ax.set_ylim(0, 1)
        ax.text(
            0.5,
            0.5,
            "no decided audit yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=SMALL + 1,
            color=COLOURS["muted"],
        )
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    last = estimates[-1]
    latest = f"last {_percent(last.value)} n={last.n}" if last and last.value is not None else ""
    _head(ax, title, latest)


def _drift(ax: Axes, x, nights: list[NightFigures], settings: Settings, title: str) -> None:
    psi_all = _value([n.drift.levels[lv].psi if n.drift else None for n in nights for lv in LEVELS])
    for level, colour in zip(LEVELS, (COLOURS["ink"], COLOURS["accent"]), strict=True):
        psi = _value([n.drift.levels[level].psi if n.drift else None for n in nights])
        ax.plot(x, psi, color=colour, linewidth=1.4, marker="o", markersize=2.5, label=level)
        drifted = np.array([bool(n.drift and n.drift.levels[level].mix_drifted) for n in nights])
        ax.plot(x[drifted], psi[drifted], "o", color=COLOURS["bad"], markersize=4.5)
    threshold = settings.drift_psi_threshold
    ax.axhline(threshold, color=COLOURS["bad"], linewidth=0.8, linestyle="--")
    top = max(threshold, np.nanmax(psi_all)) if np.isfinite(psi_all).any() else threshold
    ax.set_ylim(0, top * 1.45)  # room for the legend above the lines
    ax.legend(fontsize=SMALL, frameon=False, loc="upper left", ncols=2, handlelength=1)
    last = nights[-1]
    latest = "" if last.drift is None else f"last main {last.drift.levels['main'].psi:.2f}"
    _head(ax, title, latest, COLOURS["bad"] if last.drifted else COLOURS["ink"])


DRAW = {
    "photos": _photos,
    "failed": _failed,
    "flagged": _flagged,
    "duration": _duration,
    "throughput": _throughput,
    "accuracy": _accuracy,
    "drift": _drift,
}


def night_plot(name: str, detail: NightDetail, settings: Settings) -> bytes:
    """One of NIGHT_PLOTS for one night."""
    return NIGHT_DRAW[name](detail, settings)


def _status(detail: NightDetail, settings: Settings) -> bytes:
    fig = _figure(NIGHT_WIDTH, 2.0)
    ax = fig.add_subplot()
    _quiet(ax)
    photos = detail.night.photos
    y = np.arange(len(STATUSES))[::-1]
    counts = [photos[s] for s in STATUSES]
    ax.barh(y, counts, color=[STATUS_COLOURS[s] for s in STATUSES], height=0.65)
    ax.set_yticks(y, [s for s in STATUSES], fontsize=SMALL + 1, color=COLOURS["ink"])
    top = max(counts) or 1
    for at, n in zip(y, counts, strict=True):
        ax.text(n + top * 0.01, at, f"{n:,}", va="center", fontsize=SMALL + 1, color=COLOURS["ink"])
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _head(ax, NIGHT_PLOTS["status"], "")
    return _svg(fig)


def _mix(level: str) -> Callable[[NightDetail, Settings], bytes]:
    def draw(detail: NightDetail, settings: Settings) -> bytes:
        drift = detail.night.drift
        mix = drift.levels[level].mix if drift else ()
        fig = _figure(NIGHT_WIDTH, max(1.6, 0.9 + 0.26 * len(mix)))
        ax = fig.add_subplot()
        _quiet(ax)
        title = NIGHT_PLOTS[f"mix-{level}"]
        if not mix:
            _head(ax, title, "")
            _nothing(ax, "no baseline night to compare with yet")
            return _svg(fig)
        y = np.arange(len(mix))[::-1]
        ax.barh(
            y + 0.2,
            [s.baseline_share for s in mix],
            height=0.4,
            color=COLOURS["line"],
            label=f"baseline ({drift.baseline_nights} nights, {drift.baseline_photos:,} photos)",
        )
        ax.barh(
            y - 0.2,
            [s.night_share for s in mix],
            height=0.4,
            color=COLOURS["accent"],
            label=f"this night ({drift.night_photos:,} photos)",
        )
        ax.set_yticks(y, [s.category for s in mix], fontsize=SMALL + 0.5, color=COLOURS["ink"])
        ax.xaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
        ax.legend(fontsize=SMALL, frameon=False, loc="lower right")
        d = drift.levels[level]
        colour = COLOURS["bad"] if d.mix_drifted else COLOURS["ink"]
        _head(ax, title, f"PSI {d.psi:.2f}", colour)
        return _svg(fig)

    return draw


def _confidence(detail: NightDetail, settings: Settings) -> bytes:
    fig = _figure(NIGHT_WIDTH, 2.4)
    ax = fig.add_subplot()
    _quiet(ax)
    title = NIGHT_PLOTS["confidence"]
    sub, main = detail.histograms["sub"], detail.histograms["main"]
    if not sum(sub):
        _head(ax, title, "")
        _nothing(ax, "no classified photo")
        return _svg(fig)
    edges = np.linspace(0, 1, len(sub) + 1)
    ax.bar(
        edges[:-1], sub, width=np.diff(edges), align="edge", color=COLOURS["accent"], label="sub"
    )
    ax.stairs(main, edges, color=COLOURS["ink"], linewidth=1.3, label="main")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("photos", fontsize=SMALL, color=COLOURS["muted"])
    ax.legend(fontsize=SMALL, frameon=False, loc="upper left")
    _head(ax, title, f"{sum(sub):,} photos")
    return _svg(fig)


def _over_the_night(detail: NightDetail, settings: Settings) -> bytes:
    fig = _figure(NIGHT_WIDTH, 2.2)
    ax = fig.add_subplot()
    _quiet(ax)
    title = NIGHT_PLOTS["throughput"]
    t = detail.throughput
    if not t.buckets:
        _head(ax, title, "")
        _nothing(ax, "no classified photo")
        return _svg(fig)
    zone = ZoneInfo(settings.timezone)
    starts: list[datetime] = [start for start, _ in t.buckets]
    end = starts[-1] + timedelta(seconds=t.bucket_seconds)
    edges = mdates.date2num([*starts, end])
    counts = [n for _, n in t.buckets]
    # Steps, one per bucket: each count holds for its whole bucket.
    ax.stairs(counts, edges, fill=True, color=COLOURS["accent"], alpha=0.15)
    ax.stairs(counts, edges, color=COLOURS["accent"], linewidth=1.5)
    ax.set_ylim(0, max(counts) * 1.1)
    ax.set_xlim(edges[0], edges[-1])
    span = (end - starts[0]).total_seconds()
    if span <= 6 * 60 * TICK_MINUTES[-1]:
        ax.xaxis.set_major_locator(_clock_ticks(span, zone))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
    else:  # a sweep of days
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone, maxticks=6))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=zone))
    minutes = t.bucket_seconds / 60
    ax.set_ylabel(f"photos per {minutes:g} min", fontsize=SMALL, color=COLOURS["muted"])
    ax.set_xlabel(settings.timezone, fontsize=SMALL, color=COLOURS["muted"])
    ax.grid(axis="y", color=COLOURS["line"], linewidth=0.6)
    _head(ax, title, f"peak {max(counts):,} per {minutes:g} min")
    return _svg(fig)


def _clock_ticks(seconds: float, zone: ZoneInfo) -> mdates.DateLocator:
    """Ticks on round minutes or hours, at most about six over ``seconds`` (matplotlib's
    AutoDateLocator gives up on a span of a few minutes)."""
    minutes = next(m for m in TICK_MINUTES if seconds / 60 / m <= 6)
    if minutes < 60:
        return mdates.MinuteLocator(byminute=range(0, 60, minutes), tz=zone)
    return mdates.HourLocator(byhour=range(0, 24, minutes // 60), tz=zone)


NIGHT_DRAW = {
    "status": _status,
    "mix-main": _mix("main"),
    "mix-sub": _mix("sub"),
    "confidence": _confidence,
    "throughput": _over_the_night,
}
