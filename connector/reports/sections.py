"""The report's schema-drift and alert sections (issue 9), for text, HTML and `report diff`.

Kept apart from `connector.reports.render` so the renderers there only call in; everything here
reads the optional `schema` and `alerts` parts, which older reports do not have.
"""

from __future__ import annotations

import html
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.reports.model import RunReport

DRIFT_PARTS = (("added", "added"), ("type_changed", "type changed"), ("vanished", "vanished"))
MAX_ROWS = 100


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _types(entry: dict[str, Any]) -> str:
    new = "/".join(entry.get("types") or [])
    was = entry.get("was")
    return f"{'/'.join(was)} → {new}" if was else new


def _drift_rows(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, e) for part, label in DRIFT_PARTS for e in schema.get(part) or []]


def _records(entry: dict[str, Any]) -> str:
    of = entry.get("of_records")
    return f"{entry.get('records', 0):,}" + (f" of {of:,}" if of is not None else "")


def _schema_summary(schema: dict[str, Any]) -> str:
    records = ", ".join(f"{n:,} {e}" for e, n in (schema.get("records") or {}).items())
    baseline = schema.get("baseline") or []
    text = (f"policy {schema.get('policy', 'report')}; {schema.get('paths', 0):,} "
            f"field paths seen in {records or 'no records'}")
    if baseline:
        text += f"; baseline set for {', '.join(baseline)} (first run: no drift)"
    if schema.get("truncated"):
        text += f"; inventory bounded for {', '.join(schema['truncated'])}"
    return text


def text_schema(console: Console, report: RunReport) -> None:
    schema = report.schema_section
    if not schema:
        return
    rows = _drift_rows(schema)
    console.print(Text(f"Schema drift: {_schema_summary(schema)}"
                       + ("" if rows else "; no drift"),
                       style="bold red" if schema.get("breaking") else ""))
    if not rows:
        return
    table = Table(title="Schema drift", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("change", "field", "types", "records", "breaking"):
        table.add_column(name, no_wrap=name == "field")
    for label, e in rows[:MAX_ROWS]:
        table.add_row(label, Text(f"{e['entity']}.{e['path']}"), _types(e), _records(e),
                      "BREAKING" if e.get("breaking") else "")
    console.print(table)


def text_alerts(console: Console, report: RunReport) -> None:
    alerts = report.alerts
    if not alerts:
        return
    lines = []
    for key, label in (("raised", "raised"), ("resolved", "resolved")):
        for a in alerts.get(key) or []:
            lines.append(f"  {label}: [{a['severity']}] {a['rule']} — {a['message']}")
    still = [a["rule"] for a in alerts.get("open") or []]
    head = f"Alerts: {len(still)} open" + (f" ({', '.join(still)})" if still else "")
    console.print(Text(head, style="bold red" if still else ""))
    for line in lines:
        console.print(Text(line))


def html_schema(report: RunReport) -> str:
    schema = report.schema_section
    if not schema:
        return ""
    rows = [f'<tr><td>{_e(label)}</td><td><code>{_e(e["entity"])}.{_e(e["path"])}</code></td>'
            f'<td>{_e(_types(e))}</td><td class="n">{_e(_records(e))}</td>'
            f'<td>{"<b>breaking</b>" if e.get("breaking") else ""}</td></tr>'
            for label, e in _drift_rows(schema)[:MAX_ROWS]]
    body = "".join(rows) or '<tr><td colspan="5" class="muted">no drift</td></tr>'
    return (f'<section id="schema"><h2>Schema drift</h2><p>{_e(_schema_summary(schema))}</p>'
            '<table><thead><tr><th>change</th><th>field</th><th>types</th>'
            '<th class="n">records</th><th></th></tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


def html_alerts(report: RunReport) -> str:
    alerts = report.alerts
    if not alerts:
        return ""
    rows = [f'<tr><td>{_e(state)}</td><td>{_e(a.get("severity"))}</td>'
            f'<td><code>{_e(a.get("rule"))}</code></td><td>{_e(a.get("message"))}</td>'
            f'<td><code>{_e(a.get("alert_id"))}</code></td></tr>'
            for state in ("raised", "resolved", "open") for a in alerts.get(state) or []]
    body = "".join(rows) or '<tr><td colspan="5" class="muted">no alerts</td></tr>'
    return ('<section id="alerts"><h2>Alerts</h2><table><thead><tr><th>state</th>'
            '<th>severity</th><th>rule</th><th>message</th><th>alert id</th></tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


def diff_schema(a: RunReport, b: RunReport) -> dict[str, Any]:
    """`report diff`: the drift each run reported (entity.path lists)."""
    from connector.schema_drift import diff

    return diff(a.schema_section, b.schema_section)


def diff_schema_text(console: Console, d: dict[str, Any]) -> None:
    schema = d.get("schema") or {}
    lines = []
    for part, label in DRIFT_PARTS:
        entry = schema.get(part) or {}
        if entry.get("a") or entry.get("b"):
            lines.append(f"  {label}: {', '.join(entry.get('a') or []) or '–'} → "
                         f"{', '.join(entry.get('b') or []) or '–'}")
    console.print(Text("Schema drift: " + ("none in either run" if not lines else "")))
    for line in lines:
        console.print(Text(line))
