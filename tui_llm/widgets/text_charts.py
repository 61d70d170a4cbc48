"""Text charts drawn with numpy, without Textual: the braille line chart of the loss panel,
the sparklines of the timings panel, and the growable point buffer behind them.

The braille line chart:

Each terminal cell holds a 2x4 grid of braille dots, so a chart area of W x H cells has 2W x 4H
dots. Every series is reduced to one point per dot column (the mean of the points that fall in
it), and the points are joined dot by dot; a cell takes the style of the last line drawn through
it. Both axes get "nice" ticks (1, 2 or 5 times a power of ten), the y axis on a log scale too.
The axes' ends are rounded out a little (to about 1/50 of the x range, 1/20 of the y range), so
while a run goes on a new step mostly changes only the cells at the right end of the curve: the
chart stays calm to look at, and the widget repaints just the rows that changed.

The result is rows of (text, style) runs, exactly `width` cells each; the widget maps the style
names to colours. A 200x50 chart of a 100k-step run draws in about a millisecond.

When two lines cross the same cell, the cell's dots are the union of both and its colour that of
the line drawn last. A line drawn `on_top` (validation) instead replaces the dots of the cells it
passes through: where the raw train loss and the validation loss share a cell, the cell shows the
validation line alone, so a few validation points stay a readable line over a dense raw curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Row = list[tuple[str, str]]
"""One line of the chart: runs of text, each with a style name ("" = plain)."""

BRAILLE_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint8)
"""Bit of each dot of a braille cell (U+2800 + bits), by dot row (4) and dot column (2)."""

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
    """Its cells show its own dots only (not merged with the lines drawn before it)."""


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
    """The columns (0..columns-1 across [x_low, x_high]) that hold points, and their mean y."""
    col = np.clip(np.rint((xs - x_low) / (x_high - x_low) * (columns - 1)), 0, columns - 1).astype(np.int64)
    counts = np.bincount(col, minlength=columns)
    sums = np.bincount(col, weights=ys, minlength=columns)
    used = np.flatnonzero(counts)
    return used, sums[used] / counts[used]


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


# -- drawing ----------------------------------------------------------------------------


def polyline_dots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer dot coordinates along the segments joining (x[i], y[i]) (float dot units)."""
    if len(x) == 1:
        return np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    dx, dy = np.diff(x), np.diff(y)
    steps = np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1  # dots per segment, ends included
    segment = np.repeat(np.arange(len(dx)), steps)
    first = np.repeat(np.cumsum(steps) - steps, steps)
    t = (np.arange(len(segment)) - first) / np.repeat(np.maximum(steps - 1, 1), steps)
    return (np.rint(x[segment] + t * dx[segment]).astype(np.int64),
            np.rint(y[segment] + t * dy[segment]).astype(np.int64))


def braille_cells(dot_x: np.ndarray, dot_y: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """The braille bits (rows, cols) of a set of dots inside a cols x rows cell area."""
    cells = np.zeros(rows * cols, dtype=np.uint8)
    np.bitwise_or.at(cells, (dot_y // 4) * cols + dot_x // 2, BRAILLE_BITS[dot_y % 4, dot_x % 2])
    return cells.reshape(rows, cols)


def runs(text: str, styles: np.ndarray, names: list[str]) -> Row:
    """Split `text` where the per-cell style index changes."""
    cuts = [0, *(np.flatnonzero(np.diff(styles)) + 1).tolist(), len(text)]
    return [(text[a:b], names[styles[a]]) for a, b in zip(cuts, cuts[1:])]


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


def x_axis_rows(ticks: list[float], step: float, label_width: int, plot_cols: int, width: int,
                dot_col, x_name: str) -> list[Row]:
    """The x axis line with its ticks, and the tick labels under it; a label that would overlap
    its neighbour or the axis name is left out."""
    axis_line = ["─"] * plot_cols
    label_line = [" "] * width
    name_room = len(x_name) + 1 if x_name and plot_cols >= 3 * len(x_name) else 0
    free_from = 0
    for value in ticks:
        col = int(dot_col(value) // 2)
        if not 0 <= col < plot_cols:
            continue
        axis_line[col] = "┬"
        label = tick_label(value, step)
        start = max(label_width + 1 + col - len(label) // 2, free_from)
        start = min(start, width - name_room - len(label))
        if start >= free_from:
            label_line[start:start + len(label)] = label
            free_from = start + len(label) + 1
    if name_room:
        label_line[width - len(x_name):] = x_name
    return [fit([(" " * label_width + "└" + "".join(axis_line), AXIS)], width),
            fit([("".join(label_line), AXIS)], width)]


def draw_chart(width: int, height: int, lines: list[Line], log_y: bool = False, x_name: str = "",
               keep_y: tuple[float, float] | None = None) -> tuple[list[Row], tuple[float, float] | None]:
    """The chart as `height` rows of exactly `width` cells (legend, plot area, x axis, x labels),
    and the y range it used (pass it back as `keep_y` next time to keep the axis steady).

    x values are whole numbers (steps). Points that are not finite (or not positive, on a log
    axis) are left out. `x_name` goes at the right end of the x labels when there is room.
    """
    if width < 1 or height < 1:
        return [], None
    kept = []
    for line in lines:
        xs, ys = np.asarray(line.xs, dtype=np.float64), np.asarray(line.ys, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if log_y else True)
        kept.append(Line(xs[ok], ys[ok], line.style, line.label, line.on_top))
    rows = [fit(legend(lines), width)]
    plot_rows = height - 3
    points = [line for line in kept if len(line.xs)]
    if plot_rows < 1 or width < 2 or not points:
        return (rows + [fit([], width)] * (height - 1))[:height], None

    # The y range is that of the column means, which depend on the plot's width, which depends
    # on the y labels: find the range with a guessed label width, then lay out for real.
    x_low = min(float(line.xs.min()) for line in points)
    x_high = max(float(line.xs.max()) for line in points)
    plot_cols = max(1, width - GUESSED_LABEL_WIDTH - 1)
    x_low, x_high, _, _ = x_axis(x_low, x_high if x_high > x_low else x_low + 1, plot_cols)
    means = [column_means(line.xs, line.ys, x_low, x_high, 2 * plot_cols)[1] for line in points]
    y_low = min(float(m.min()) for m in means)
    y_high = max(float(m.max()) for m in means)
    if y_high == y_low:
        pad = abs(y_low) * 0.05 or 1.0
        y_low, y_high = (y_low / 1.1, y_high * 1.1) if log_y else (y_low - pad, y_high + pad)
    y_low, y_high, y_ticks, y_step = y_axis(y_low, y_high, plot_rows, log_y, keep_y)
    y_labels = [tick_label(t, y_step) for t in y_ticks]
    label_width = max(len(s) for s in y_labels)
    if width - label_width - 1 < 2:  # too narrow for labels
        y_labels, label_width = [""] * len(y_ticks), 0
    plot_cols = width - label_width - 1
    x_low, x_high, x_ticks, x_step = x_axis(x_low, x_high, plot_cols)
    dot_cols, dot_rows = 2 * plot_cols, 4 * plot_rows
    scale = np.log10 if log_y else (lambda v: np.asarray(v, dtype=np.float64))
    f_low, f_high = float(scale(y_low)), float(scale(y_high))

    def dot_row(values) -> np.ndarray:  # top row is 0
        return (dot_rows - 1) * (1 - (scale(values) - f_low) / (f_high - f_low))

    def dot_col(values) -> np.ndarray:
        return (dot_cols - 1) * (np.asarray(values, dtype=np.float64) - x_low) / (x_high - x_low)

    # draw: later lines over earlier ones
    bits = np.zeros((plot_rows, plot_cols), dtype=np.uint8)
    owner = np.zeros((plot_rows, plot_cols), dtype=np.int64)  # index into style names
    names = [""] + [line.style for line in kept]
    for i, line in enumerate(kept):
        if not len(line.xs):
            continue
        columns, ys = column_means(line.xs, line.ys, x_low, x_high, dot_cols)
        dx, dy = polyline_dots(columns.astype(np.float64), dot_row(ys))
        cells = braille_cells(np.clip(dx, 0, dot_cols - 1), np.clip(dy, 0, dot_rows - 1), plot_cols, plot_rows)
        mine = cells > 0
        owner[mine] = i + 1
        if line.on_top:
            bits[mine] = cells[mine]
        else:
            bits |= cells
    codes = np.where(bits > 0, 0x2800 + bits.astype(np.uint32), ord(" ")).astype("<u4")

    tick_at_row = {}
    for value, label in zip(y_ticks, y_labels):
        tick_at_row.setdefault(int(round(float(dot_row(value))) // 4), label)
    for r in range(plot_rows):
        label = tick_at_row.get(r)
        axis = (f"{label:>{label_width}}┤" if label is not None else " " * label_width + "│")
        text = codes[r].tobytes().decode("utf-32-le")
        rows.append(fit([(axis, AXIS), *runs(text, owner[r], names)], width))

    rows += x_axis_rows(x_ticks, x_step, label_width, plot_cols, width, dot_col, x_name)
    return rows[:height], (y_low, y_high)


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
