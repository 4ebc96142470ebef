"""HTML assembly: sections of text, tables and base64-embedded PNG figures, one file
that opens anywhere (no network, no folder of images to lose). Patients appear only
as "case N": the report can leave the hospital."""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.pass{color:#176b2c;font-weight:600}
.fail{color:#a11;font-weight:600}.figs{display:flex;flex-wrap:wrap;gap:.6em}.note{color:#555;font-size:.9em}
"""


def esc(value) -> str:
    return html.escape(str(value))


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return esc(value)


def table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def checks_table(checks) -> str:
    rows = "".join(
        f"<tr><td>{esc(c.name)}</td><td>{fmt(float(c.measured))}</td><td>{esc(c.threshold)}</td>"
        f"<td class={'pass' if c.passed else 'fail'}>{'pass' if c.passed else 'FAIL'}</td><td>{esc(c.detail)}</td></tr>"
        for c in checks
    )
    return (
        "<table><tr><th>check against the truth</th><th>measured</th><th>threshold</th><th>result</th>"
        f"<th>detail</th></tr>{rows}</table>"
    )


def page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{esc(name)}</h2>{content}" for name, content in sections)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>"
    )
