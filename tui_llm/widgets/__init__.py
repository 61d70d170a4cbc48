"""The dashboard's panels, each a Textual widget with its DEFAULT_CSS, and the Textual-free chart
code they draw with (text_charts.py: layout, sparklines, buffers; plotext_charts.py: the chart)."""
