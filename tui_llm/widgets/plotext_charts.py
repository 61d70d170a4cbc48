"""The chart of the loss panel, drawn by plotext (no Textual here).

`draw_chart` lays the chart out itself (widgets/text_charts.py: "nice" ticks, an x range rounded
out to about 1/50 of it, a y range kept steady while the data fills it, one point per braille dot
column) and lets plotext draw the lines, axes and tick labels into that layout. So a 100k-step run
hands plotext a few hundred points per line (about 10 ms at 200x50), and while a run goes on a new
step mostly changes the cells at the right end of the curves: the widget repaints only the rows
that changed.

Each call builds its own plotext figure (plotext 6 keeps state in its figures: a figure per chart
and per call leaves nothing shared). The lines get 256-colour codes 1, 2, 3, ... in the order given,
which are read back from plotext's output as the lines' style names: the widget maps those to its
theme's colours. A line drawn later is drawn over the earlier ones.

Outlier-robust y range: a line marked `robust` (the raw train loss) counts with its 0.5th..99.5th
percentiles, the others (smoothed loss, validation) with their whole range; a loss spike then goes
off the top of the chart instead of squashing the curve, while the smoothed and validation curves
always fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import plotext
from plotext._kernel.terminal import terminal as plotext_terminal

from tui_llm.widgets.text_charts import (
    AXIS,
    GUESSED_LABEL_WIDTH,
    Line,
    Row,
    column_means,
    fit,
    legend,
    tick_label,
    x_axis,
    y_axis,
)

ROBUST_PERCENTILES = (0.5, 99.5)

MARKER = "marker"
"""Style name of the vertical markers (a live setting changed at that step)."""


def new_figure():
    """A plotext figure of its own, drawing without colours of its own and without a frame."""
    terminal = plotext_terminal()
    terminal.limit(False, False)  # the widget's size, not the terminal's
    figure = terminal._master
    figure.theme("colorless")
    figure.canvas(background="default")
    figure.legend(False)
    figure.axes(False, axis="x", side="upper")
    figure.axes(False, axis="y", side="right")
    figure.ruler("both").alignment(lim="edge")  # the limits at the plot's edges, as the layout assumes
    return figure


ANSI = re.compile(r"\x1b\[([0-9;]*)m")


def ansi_row(line: str, names: list[str], width: int) -> Row:
    """One line of plotext's output as runs of (text, style name): 256-colour k is names[k]; text
    without a colour is the axes' (the colorless theme only colours the lines)."""
    row: Row = []
    style = ""
    pos = 0
    for match in ANSI.finditer(line + "\x1b[0m"):
        text = line[pos:match.start()]
        if text:
            row.append((text, style or (AXIS if text.strip() else "")))
        codes = match.group(1)
        if codes.startswith("38;5;"):
            number = int(codes.split(";")[2])
            style = names[number] if 0 < number < len(names) else ""
        elif codes in ("0", ""):
            style = ""
        pos = match.end()
    return fit(row, width)


def draw_chart(width: int, height: int, lines: list[Line], log_y: bool = False, x_name: str = "",
               keep_y: tuple[float, float] | None = None,
               x_label: Callable[[float, float], str] = tick_label,
               markers: Sequence[float] = (),
               ) -> tuple[list[Row], tuple[float, float] | None]:
    """The chart as `height` rows of exactly `width` cells (legend, plot area, x axis, x labels),
    and the y range it used (pass it back as `keep_y` next time to keep the axis steady).

    Points that are not finite (or not positive, on a log axis) are left out. `x_name` goes at
    the right end of the x labels when there is room; `x_label(value, step)` writes an x tick;
    `markers`: x values marked by a dotted vertical line (style MARKER) in the plot's empty cells.
    """
    if width < 1 or height < 1:
        return [], None
    kept = []
    for line in lines:
        xs, ys = np.asarray(line.xs, dtype=np.float64), np.asarray(line.ys, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if log_y else True)
        kept.append(Line(xs[ok], ys[ok], line.style, line.label, line.on_top, line.robust, line.smooth))
    rows = [fit(legend(lines), width)]
    plot_rows = height - 3
    points = [line for line in kept if len(line.xs)]
    if plot_rows < 1 or width < 4 or not points:
        return (rows + [fit([], width)] * (height - 1))[:height], None

    # The y range is that of the column means, which depend on the plot's width, which depends
    # on the y labels: find the range with a guessed label width, then lay out for real.
    x_low = min(float(line.xs.min()) for line in points)
    x_high = max(float(line.xs.max()) for line in points)
    plot_cols = max(1, width - GUESSED_LABEL_WIDTH - 1)
    x_low, x_high, _, _ = x_axis(x_low, x_high if x_high > x_low else x_low + 1, plot_cols)
    lows, highs = [], []
    for line in points:
        means = column_means(line.xs, line.ys, x_low, x_high, 2 * plot_cols)[1]
        if line.robust:  # values of the series, not between them: one spike is left out whole
            low = np.percentile(means, ROBUST_PERCENTILES[0], method="higher")
            high = np.percentile(means, ROBUST_PERCENTILES[1], method="lower")
        else:
            low, high = means.min(), means.max()
        lows.append(float(low))
        highs.append(float(high))
    y_low, y_high = min(lows), max(highs)
    if y_high == y_low:
        pad = abs(y_low) * 0.05 or 1.0
        y_low, y_high = (y_low / 1.1, y_high * 1.1) if log_y else (y_low - pad, y_high + pad)
    y_low, y_high, y_ticks, y_step = y_axis(y_low, y_high, plot_rows, log_y, keep_y)
    y_labels = [tick_label(t, y_step) for t in y_ticks]
    label_width = max(len(s) for s in y_labels)
    plot_cols = max(1, width - label_width - 1)
    x_low, x_high, x_ticks, x_step = x_axis(x_low, x_high, plot_cols)
    dot_cols = 2 * plot_cols

    # A log axis is a linear one of log10(y), labelled with the values (plotext's own log scale
    # and explicit limits do not go together).
    scale = np.log10 if log_y else np.asarray
    figure = new_figure()
    names = [""]
    names += [line.style for line in kept]
    for i in sorted(range(len(kept)), key=lambda k: kept[k].on_top):  # on_top lines last
        line = kept[i]
        if not len(line.xs):
            continue
        # one point per dot column; a smooth curve needs one per cell (plotext's time goes by points)
        n = plot_cols if line.smooth else dot_cols
        columns, ys = column_means(line.xs, line.ys, x_low, x_high, n)
        xs = x_low + columns / max(n - 1, 1) * (x_high - x_low)
        marker = plotext.marker("braille").fill(i + 1)
        figure.draw(figure.signal(xs.tolist(), scale(ys).tolist(), marker=marker).lines())
    figure.ruler("x").lim(x_low, x_high)
    figure.ruler("x").ticks(x_ticks, labels_apart([x_label(t, x_step) for t in x_ticks], plot_cols))
    figure.ruler("y").lim(float(scale(y_low)), float(scale(y_high)))
    figure.ruler("y").ticks(scale(np.asarray(y_ticks, dtype=np.float64)).tolist(), y_labels)
    figure.plot_size(width, height - 1)
    output = figure.build().string().split("\n")
    rows += [ansi_row(line, names, width) for line in output[:height - 1]]
    rows += [fit([], width)] * (height - len(rows))
    for x in markers:
        if x_low <= x <= x_high:
            col = label_width + 1 + round((x - x_low) / (x_high - x_low) * (plot_cols - 1))
            for y in range(1, 1 + plot_rows):
                rows[y] = set_blank_cell(rows[y], col, "┊", MARKER)
    if x_name:  # what the x axis counts, at the right end of the legend row
        head = "".join(text for text, _ in rows[0]).rstrip()
        if len(head) + 2 + len(x_name) <= width:
            rows[0] = fit(trim(rows[0], len(head)) + [(" " * (width - len(head) - len(x_name)), ""), (x_name, AXIS)], width)
    return rows[:height], (y_low, y_high)


def set_blank_cell(row: Row, col: int, char: str, style: str) -> Row:
    """The row with the cell at `col` set to `char` in `style`, if that cell is a blank."""
    used = 0
    for i, (text, old_style) in enumerate(row):
        if used + len(text) > col:
            at = col - used
            if text[at] != " ":
                return row
            pieces = [(text[:at], old_style), (char, style), (text[at + 1:], old_style)]
            return row[:i] + [piece for piece in pieces if piece[0]] + row[i + 1:]
        used += len(text)
    return row


def trim(row: Row, width: int) -> Row:
    """The first `width` cells of a row."""
    out, used = [], 0
    for text, style in row:
        if used >= width:
            break
        out.append((text[:width - used], style))
        used += len(out[-1][0])
    return out


def labels_apart(labels: list[str], plot_cols: int) -> list[str]:
    """Blank every other label while the labels would not fit side by side."""
    labels = list(labels)
    while sum(len(s) + 1 for s in labels if s) > plot_cols and sum(1 for s in labels if s) > 1:
        shown = [i for i, s in enumerate(labels) if s]
        for i in shown[1::2]:
            labels[i] = ""
    return labels


def human_number(value: float, step: float) -> str:
    """An x tick of tokens: 0, 500, 1.5k, 2M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            digits = max(0, -math.floor(math.log10(step / size) + 1e-9)) if step > 0 else 0
            return f"{value / size:.{min(digits, 2)}f}{unit}"
    return f"{value:.0f}"


def duration_label(seconds: float, step: float) -> str:
    """An x tick of elapsed time: 45s, 12m, 1h30m."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"
