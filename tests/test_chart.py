"""The metrics chart (its layout in widgets/text_charts.py, drawn by plotext: widgets/plotext_charts.py),
the timing sparklines and the loss plot's buffers.

Charts are read back the way a person would: braille characters are decoded into their dots,
and axis labels are found by their text.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tui_llm.widgets.plotext_charts import draw_chart, duration_label, human_number
from tui_llm.widgets.text_charts import Columns, Line, Points, linear_ticks, log_ticks, nice_step, sparkline_rows, tick_label

# Unicode braille: dots 1-2-3 down the left column, 4-5-6 down the right, 7 and 8 below them.
DOT_BITS = {(0, 0): 0x01, (0, 1): 0x02, (0, 2): 0x04, (1, 0): 0x08,
            (1, 1): 0x10, (1, 2): 0x20, (0, 3): 0x40, (1, 3): 0x80}
"""(column, row) inside a cell -> bit."""


def text_rows(rows) -> list[str]:
    return ["".join(text for text, _ in row) for row in rows]


def chart(*args, **kwargs) -> list[str]:
    """The chart's rows as text."""
    rows, _ = draw_chart(*args, **kwargs)
    return text_rows(rows)


def plot_area(rows: list[str]) -> tuple[list[str], int]:
    """The rows between the legend and the x axis, and the column where the plot starts."""
    area = rows[1:-2]
    start = area[0].index("┤") + 1 if "┤" in area[0] else area[0].index("│") + 1
    return [row[start:] for row in area], start


def dots_of(area: list[str]) -> set[tuple[int, int]]:
    """Every braille dot drawn, as (dot column, dot row) from the top left."""
    dots = set()
    for r, row in enumerate(area):
        for c, char in enumerate(row):
            if "\u2800" <= char <= "\u28ff":
                bits = ord(char) - 0x2800
                dots |= {(2 * c + dx, 4 * r + dy) for (dx, dy), bit in DOT_BITS.items() if bits & bit}
    return dots


def test_a_diagonal_line_has_one_dot_per_column_on_the_true_line():
    rows = chart(12, 7, [Line(np.array([0.0, 10.0]), np.array([0.0, 10.0]), "a")])
    area, _ = plot_area(rows)
    dot_cols, dot_rows = 2 * len(area[0]), 4 * len(area)
    dots = dots_of(area)
    assert sorted(x for x, _ in dots) == list(range(dot_cols))  # continuous, one dot per column
    for x, y in dots:
        exact = (dot_rows - 1) * (1 - x / (dot_cols - 1))  # y = x, top row is 0
        assert abs(y - exact) <= 1  # plotext's rasterising: within a dot


def test_a_flat_line_is_one_dot_row_through_the_whole_plot():
    rows = chart(30, 10, [Line(np.arange(5.0), np.full(5, 3.0), "a")])
    area, _ = plot_area(rows)
    dots = dots_of(area)
    assert len({y for _, y in dots}) == 1
    assert len(dots) == 2 * len(area[0])


def test_every_row_is_exactly_the_width_asked_for():
    t = np.arange(50.0)
    cases = {
        "empty": [Line(np.array([]), np.array([]), "a", "train")],
        "one point": [Line(np.array([3.0]), np.array([2.0]), "a", "train")],
        "curves": [Line(t, 2 + np.exp(-t / 9), "a", "train"), Line(t[::7], 2.2 + np.exp(-t[::7] / 9), "b", "val")],
        "nan and zero": [Line(t, np.where(t % 5 == 0, np.nan, t % 3), "a", "x")],
    }
    for name, lines in cases.items():
        for log_y in (False, True):
            for width in range(1, 70, 6):
                for height in range(1, 16, 2):
                    rows = chart(width, height, lines, log_y=log_y, x_name="step")
                    assert len(rows) == height, (name, width, height)
                    assert all(len(text) == width for text in rows), (name, log_y, width, height)


def y_labels(rows: list[str]) -> dict[float, int]:
    """Labelled y values -> their row in the plot area."""
    return {float(m.group(1)): r for r, row in enumerate(rows[1:-2]) if (m := re.match(r"\s*([\d.]+)┤", row))}


def assert_labels_on_the_line(rows: list[str], x_of_value, x_high: float) -> None:
    """Each y label's row holds the line's dots where the line has that value (x from 0 to x_high)."""
    area, _ = plot_area(rows)
    dots = dots_of(area)
    dot_cols = 2 * len(area[0])
    for value, row in y_labels(rows).items():
        column = round(x_of_value(value) / x_high * (dot_cols - 1))
        ys = [y for dx, y in dots if dx == column]
        assert any(abs(y // 4 - row) <= 1 for y in ys), (value, row, ys)  # plotext rounds to cells its own way


def test_y_labels_sit_on_the_rows_of_their_values():
    x = np.linspace(0, 12, 200)  # y = x
    rows = chart(60, 17, [Line(x, x, "a")])
    assert rows[-1].split() == ["0", "5", "10"]  # x ends at 12: no wasted space
    assert list(y_labels(rows)) == [10, 5, 0]
    assert_labels_on_the_line(rows, lambda v: v, 12)


def test_log_axis_has_decade_ticks_and_draws_a_geometric_series_straight():
    x = np.arange(101.0)
    y = 10 ** (x / 50)  # 1 .. 100
    rows = chart(40, 23, [Line(x, y, "a")], log_y=True)
    assert {1, 10, 100} <= set(y_labels(rows)) <= {1, 2, 5, 10, 20, 50, 100}
    assert_labels_on_the_line(rows, lambda v: 50 * math.log10(v), 100)
    area, _ = plot_area(rows)
    dots = dots_of(area)
    dot_cols, dot_rows = 2 * len(area[0]), 4 * len(area)
    assert sorted({x for x, _ in dots}) == list(range(dot_cols))
    for column, row in dots:  # a straight line from the bottom left to the top right
        assert abs(row - (dot_rows - 1) * (1 - column / (dot_cols - 1))) <= 1.5


@pytest.mark.slow
def test_axes_move_only_now_and_then_as_a_run_grows():
    """A new step changes only the chart's right end, not its axes, most of the time."""
    steps = np.arange(2000.0)
    loss = 2 + 9 * np.exp(-steps / 300) + 0.1 * np.sin(steps)
    axes_moved, changed_rows = 0, []
    previous, y_range = None, None
    for n in range(1500, 2000):
        drawn, y_range = draw_chart(120, 30, [Line(steps[:n], loss[:n], "a")], keep_y=y_range)  # as MetricsChart does
        rows = text_rows(drawn)
        if previous is not None:
            changed_rows.append(sum(a != b for a, b in zip(previous, rows)))
            axes_moved += y_labels(rows) != y_labels(previous) or rows[-1] != previous[-1]
        previous = rows
    assert axes_moved <= 15  # x grows by 1/50 of the run (every ~35 steps here), y rarely
    assert np.median(changed_rows) <= 3


def test_a_kept_range_is_used_while_the_data_fills_it():
    x = np.arange(50.0)
    y = 3 + np.sin(x)  # 2 .. 4
    _, natural = draw_chart(40, 20, [Line(x, y, "a")])
    assert natural[0] <= 2 and natural[1] >= 4
    assert draw_chart(40, 20, [Line(x, y, "a")], keep_y=(1.8, 4.2))[1] == (1.8, 4.2)
    assert draw_chart(40, 20, [Line(x, y, "a")], keep_y=(0.0, 10.0))[1] == natural  # mostly empty
    assert draw_chart(40, 20, [Line(x, y, "a")], keep_y=(2.5, 3.5))[1] == natural  # data outside
    assert draw_chart(40, 20, [Line(x, y, "a")], log_y=True, keep_y=(0.0, 5.0))[1][0] > 0  # not on a log axis


def test_later_lines_are_drawn_over_earlier_ones():
    x = np.arange(10.0)
    rows, _ = draw_chart(30, 10, [Line(x, x, "under", "u"), Line(x, x, "over", "o")])
    plot_styles = {style for row in rows[1:-2] for text, style in row if text.strip("│┤ 0123456789.")}
    assert plot_styles == {"over"}
    assert text_rows(rows)[0].startswith("━━ u   ━━ o")


def test_a_line_on_top_is_drawn_over_a_dense_line():
    """Validation over a noisy raw train loss: every cell it passes through has its colour,
    wherever the raw line is listed (plotext merges the dots of lines sharing a cell)."""
    x = np.arange(0.0, 400.0)
    noisy = 5 + np.where(x % 2 == 0, 1.0, -1.0) * np.linspace(0.1, 1, 400)
    val = Line(np.array([0.0, 399.0]), np.array([4.0, 6.0]), "val", on_top=True)
    alone, _ = draw_chart(60, 16, [Line(x, np.full_like(x, 5.0), "train"), val])
    alone_area, start = plot_area(text_rows(alone))
    val_cells = {(r, c) for r, row in enumerate(alone_area) for c, ch in enumerate(row)
                 if ch != " " and dict(enumerate(cell_styles(alone[1 + r])))[start + c] == "val"}
    assert len(val_cells) > 10
    for lines in ([Line(x, noisy, "train"), val], [val, Line(x, noisy, "train")]):
        both, _ = draw_chart(60, 16, lines)
        for r, c in val_cells:
            assert cell_styles(both[1 + r])[start + c] == "val"


def cell_styles(row) -> list[str]:
    return [style for text, style in row for _ in text]


def test_a_loss_spike_does_not_squash_the_chart():
    x = np.arange(1.0, 301.0)  # fewer steps than dot columns: the spike is not averaged away
    loss = 2 + 3 * np.exp(-x / 50)
    spiky = loss.copy()
    spiky[200] = 60.0  # one step blows up
    _, plain_range = draw_chart(100, 30, [Line(x, loss, "train", robust=True)])
    _, spiky_range = draw_chart(100, 30, [Line(x, spiky, "train", robust=True)])
    assert spiky_range[1] <= plain_range[1] + 0.5 < 10  # the spike goes off the top
    _, whole = draw_chart(100, 30, [Line(x, spiky, "train")])  # not robust: everything fits
    assert whole[1] >= 30  # the spike's dot column (its mean with a neighbour) fits


def test_x_labels_of_tokens_and_time():
    assert [human_number(v, 500) for v in (0, 500, 1500)] == ["0", "500", "1.5k"]
    assert human_number(2_500_000, 500_000) == "2.5M"
    assert [duration_label(v, 30) for v in (45, 720, 5400, 3600)] == ["45s", "12m", "1h30m", "1h"]


def test_columns_grow_and_drop():
    c = Columns(("step", "loss"))
    for s in range(1, 3001):
        c.append((s, 1.0 / s))
    assert len(c) == 3000 and c["loss"][1] == 0.5
    c.drop_from(101)
    assert c["step"][-1] == 100


def test_points_that_cannot_be_drawn_are_left_out():
    x = np.arange(6.0)
    y = np.array([1.0, np.nan, 4.0, -1.0, np.inf, 2.0])
    linear = dots_of(plot_area(chart(30, 10, [Line(x, y, "a")]))[0])
    log = dots_of(plot_area(chart(30, 10, [Line(x, y, "a")], log_y=True))[0])
    assert linear and log
    # the log chart has no -1: its lowest value is 1, at the bottom row
    assert max(y for _, y in log) == 4 * 7 - 1


def test_nice_ticks():
    assert nice_step(10, 5) == 2
    assert nice_step(7, 5) == 2
    assert nice_step(0.3, 3) == pytest.approx(0.1)
    assert nice_step(4500, 4) == 2000
    assert linear_ticks(2.3, 5.1, 5) == ([3.0, 4.0, 5.0], 1.0)
    assert log_ticks(2, 11, 5) == [2, 5, 10]
    assert log_ticks(1, 1000, 4) == [1, 10, 100, 1000]
    assert log_ticks(2, 5, 5) == [2, 3, 4, 5]  # too narrow for 1-2-5 ticks: linear ones
    assert tick_label(2.5, 0.5) == "2.5"
    assert tick_label(3.0, 1.0) == "3"
    assert tick_label(0.25, 0.05) == "0.25"
    assert tick_label(2e-5, 1e-5) == "2e-05"
    assert math.isclose(float(tick_label(1.2000000001, 0.2)), 1.2)


def test_sparkline_rows():
    assert sparkline_rows(np.array([0.0, 1.0]), 2, 1) == ["▁█"]
    assert sparkline_rows(np.array([0.0, 1.0]), 2, 2) == [" █", "▁█"]
    assert sparkline_rows(np.array([5.0, 5.0, 5.0]), 4, 1) == ["▄▄▄ "]  # flat: half height
    assert sparkline_rows(np.array([]), 3, 2) == ["   ", "   "]
    rising = sparkline_rows(np.arange(240.0), 120, 1)[0]  # two values per column
    assert len(rising) == 120 and rising[0] == "▁" and rising[-1] == "█"
    assert list(rising) == sorted(rising, key=" ▁▂▃▄▅▆▇█".index)


def test_points_grow_and_drop():
    points = Points()
    for step in range(3000):
        points.append(step, step / 2)
    assert len(points) == 3000
    assert points.x[-1] == 2999 and points.y[-1] == 1499.5
    points.drop_from(1000)
    assert len(points) == 1000 and points.x[-1] == 999
    points.append(1000, 7.0)
    assert points.y[-1] == 7.0 and len(points) == 1001
