"""Chart layout and text drawn with numpy, without Textual: the layout of the metrics chart
(plotext draws it: widgets/plotext_charts.py), the sparklines of the timings panel, and the
growable buffers behind them.

The chart's layout: every series is reduced to one point per braille dot column (the mean of the
points that fall in it), so a 100k-step run draws as fast as a short one. Both axes get "nice"
ticks (1, 2 or 5 times a power of ten), the y axis on a log scale too. The axes' ends are rounded
out a little (to about 1/50 of the x range, 1/20 of the y range), and a y range is kept while the
data fills most of it, so while a run goes on a new step mostly changes only the cells at the
right end of the curves: the chart stays calm to look at, and the widget repaints just the rows
that changed. Rows are runs of (text, style name), exactly `width` cells each; the widget maps
the style names to colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Row = list[tuple[str, str]]
"""One line of the chart: runs of text, each with a style name ("" = plain)."""

AXIS = "axis"
"""Style name of the axes, ticks and their labels."""

GUESSED_LABEL_WIDTH = 5
"""y label width assumed while the y range is found (the range decides the real labels)."""


@dataclass(frozen=True)
class Line:
    """One series: its points (any number, x increasing) and how to show it."""

    xs: np.ndarray
    ys: np.ndarray
    style: str
    label: str = ""
    """Shown in the legend (the first row) when not empty."""
    on_top: bool = False
    """Drawn over the others (validation over the raw loss)."""
    robust: bool = False
    """Its outliers may fall off the y range (plotext_charts.py: the raw train loss)."""
    smooth: bool = False
    """A smooth curve (the EMA): one point per cell column draws it as well as one per dot column."""


def bucket_means(xs: np.ndarray, ys: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Downsample a series to at most `buckets` points, each the mean of a run of neighbours."""
    n = len(xs)
    if n <= buckets:
        return xs, ys
    # Every bucket holds at least one point because n > buckets.
    starts = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(starts, n))
    return np.add.reduceat(xs, starts) / counts, np.add.reduceat(ys, starts) / counts


def column_means(xs: np.ndarray, ys: np.ndarray, x_low: float, x_high: float, columns: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The columns (0..columns-1 across [x_low, x_high]) that hold points, and their mean y.
    `xs` is increasing: each column's points are one run, found by binary search (a 100k-step
    series reduces in well under a millisecond)."""
    scale = (columns - 1) / (x_high - x_low)
    edges = x_low + (np.arange(1, columns) - 0.5) / scale  # where column k-1 ends and k begins
    bounds = np.concatenate([[0], np.searchsorted(xs, edges, side="left"), [len(xs)]])
    counts = np.diff(bounds)
    used = np.flatnonzero(counts)
    sums = np.add.reduceat(ys, bounds[used]) if len(used) else np.zeros(0)
    return used, sums / counts[used]


# -- ticks ------------------------------------------------------------------------------


def nice_step(span: float, max_ticks: int) -> float:
    """The smallest of 1, 2, 5 x 10^k that cuts `span` into at most `max_ticks` intervals."""
    raw = span / max(max_ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10.0 * power


def linear_ticks(low: float, high: float, max_ticks: int) -> tuple[list[float], float]:
    """Multiples of a nice step inside [low, high], and the step."""
    step = nice_step(high - low, max_ticks)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [k * step for k in range(first, last + 1)], step


def log_ticks(low: float, high: float, max_ticks: int) -> list[float]:
    """1, 2 and 5 x 10^k inside [low, high] (both > 0), thinned to at most `max_ticks`."""
    ticks = [m * 10.0 ** k
             for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    ticks = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
    for keep in ((1, 2, 5), (1, 5), (1,)):
        if len(ticks) <= max_ticks:
            break
        ticks = [t for t in ticks if round(t / 10.0 ** math.floor(math.log10(t) + 1e-9)) in keep]
    if len(ticks) < 3:  # less than a factor of ~5 between low and high: linear ticks read better
        ticks = linear_ticks(low, high, max_ticks)[0]
    return ticks[:max(max_ticks, 1)] if len(ticks) > max_ticks else ticks


def tick_label(value: float, step: float) -> str:
    """Enough decimals to tell ticks `step` apart, no more."""
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-4):
        return f"{value:.2g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def round_out(low: float, high: float, quantum: float) -> tuple[float, float]:
    """[low, high] widened to multiples of `quantum`."""
    return math.floor(low / quantum + 1e-9) * quantum, math.ceil(high / quantum - 1e-9) * quantum


def round_out_log(low: float, high: float) -> tuple[float, float]:
    """[low, high] (> 0) widened to multiples of 0.2 x 10^k, k of each end's own decade
    (2.13 -> 2.0, 11.3 -> 12)."""
    def quantum(v: float) -> float:
        return 0.2 * 10.0 ** math.floor(math.log10(v))

    return (math.floor(low / quantum(low) + 1e-9) * quantum(low),
            math.ceil(high / quantum(high) - 1e-9) * quantum(high))


def y_axis(low: float, high: float, plot_rows: int, log_y: bool, keep: tuple[float, float] | None = None
           ) -> tuple[float, float, list[float], float]:
    """The y range, its ticks and their spacing: about one tick every 3 rows, at least two if
    they fit. The range is [low, high] widened to a multiple of about 1/20 of it, or `keep` (the
    range drawn last time) while the data fills most of that: an axis that moved with every
    new minimum would jump back and forth as the loss wobbles."""
    scale = math.log10 if log_y else float
    if (keep and keep[0] <= low and high <= keep[1] and keep[1] > keep[0] and (keep[0] > 0 or not log_y)
            and scale(high) - scale(low) >= 0.7 * (scale(keep[1]) - scale(keep[0]))):
        low_end, high_end = keep
    elif log_y:
        low_end, high_end = round_out_log(low, high)
    else:
        low_end, high_end = round_out(low, high, nice_step(high - low, 20))
    for max_ticks in range(max(2, plot_rows // 3), plot_rows + 3):
        ticks = log_ticks(low_end, high_end, max_ticks) if log_y else linear_ticks(low_end, high_end, max_ticks)[0]
        if len(ticks) >= 2:
            break
    step = min((b - a for a, b in zip(ticks, ticks[1:])), default=high_end - low_end)
    return low_end, high_end, ticks, step


def x_axis(low: float, high: float, plot_cols: int) -> tuple[float, float, list[float], float]:
    """The x range (whole numbers, widened to a multiple of about 1/50 of it), its ticks, far
    enough apart for their labels, and their step."""
    low_end, high_end = round_out(low, high, max(1.0, nice_step(high - low, 50)))
    widest = max(len(tick_label(v, 1)) for v in (low_end, high_end))
    ticks, step = linear_ticks(low_end, high_end, max(1, plot_cols // max(widest + 4, 10)))
    if step < 1:
        ticks, step = [float(v) for v in range(math.ceil(low_end), math.floor(high_end) + 1)], 1.0
    return low_end, high_end, ticks, step


# -- rows -------------------------------------------------------------------------------


def fit(row: Row, width: int) -> Row:
    """Crop or pad a row to exactly `width` cells (all text here is one cell per character)."""
    out, used = [], 0
    for text, style in row:
        text = text[:width - used]
        if text:
            out.append((text, style))
            used += len(text)
    if used < width:
        out.append((" " * (width - used), ""))
    return out


def legend(lines: list[Line]) -> Row:
    row: Row = []
    for line in lines:
        if line.label:
            row += [("━━ ", line.style), (line.label + "   ", "")]
    return row


# -- sparklines -------------------------------------------------------------------------

BARS = " ▁▂▃▄▅▆▇█"
"""A sparkline cell filled 0/8 to 8/8."""


def sparkline_rows(values: np.ndarray, width: int, rows: int) -> list[str]:
    """`values` as vertical bars, `rows` cells high, one column per value (or per bucket mean)
    from the left; the smallest value gets a thin bar, the largest a full one."""
    if width < 1 or rows < 1:
        return []
    if len(values) == 0:
        return [" " * width] * rows
    _, values = bucket_means(np.arange(len(values), dtype=np.float64), values, width)
    low, high = float(values.min()), float(values.max())
    span = high - low
    eighths = 1 + np.rint((values - low) / span * (8 * rows - 1) if span > 0 else np.full(len(values), 4 * rows - 1))
    lines = []
    for row in range(rows - 1, -1, -1):  # top row first
        level = np.clip(eighths - 8 * row, 0, 8).astype(np.int64)
        lines.append("".join(BARS[k] for k in level).ljust(width))
    return lines


# -- series -----------------------------------------------------------------------------


class Points:
    """(x, y) pairs appended one at a time, seen as numpy arrays (amortised O(1) appends)."""

    def __init__(self) -> None:
        self._xy = np.empty((2, 1024))
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def x(self) -> np.ndarray:
        return self._xy[0, :self.count]

    @property
    def y(self) -> np.ndarray:
        return self._xy[1, :self.count]

    def append(self, x: float, y: float) -> None:
        if self.count == self._xy.shape[1]:
            self._xy = np.concatenate([self._xy, np.empty_like(self._xy)], axis=1)
        self._xy[:, self.count] = x, y
        self.count += 1

    def drop_from(self, x: float) -> None:
        """Forget the points at x and after (x is increasing)."""
        self.count = int(np.searchsorted(self.x, x, side="left"))


class Columns:
    """Rows of named float columns appended one at a time (amortised O(1)), each column seen as
    a numpy array; rows are kept in the order of the first column (the step)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._index = {name: i for i, name in enumerate(names)}
        self._data = np.empty((len(names), 1024))
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, name: str) -> np.ndarray:
        return self._data[self._index[name], :self.count]

    def append(self, values: tuple[float, ...]) -> None:
        if self.count == self._data.shape[1]:
            self._data = np.concatenate([self._data, np.empty_like(self._data)], axis=1)
        self._data[:, self.count] = values
        self.count += 1

    def drop_from(self, first: float) -> None:
        """Forget the rows whose first column is `first` or more (it is increasing)."""
        self.count = int(np.searchsorted(self._data[0, :self.count], first, side="left"))
