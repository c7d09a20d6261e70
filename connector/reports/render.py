"""The mapping report of a run, rendered for people: text (rich), JSON, HTML, and diffs.

A report is a `RunReport` (connector.reports.model); the renderers read its attributes.
They also take the stored JSON form (a dict, of any report version), which is loaded
into the model first; a part missing from a report is simply empty. Everything taken
from a report is escaped (rich markup and HTML), and values under key-like names are
masked in the HTML, although the job already keeps keys out of reports.
"""

from __future__ import annotations

import html
import io
import json
import re
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.reports import sections as report_sections
from connector.reports.model import (
    COUNT_KEYS,
    PHASE_NAMES,
    FieldCoverage,
    MessageCounts,
    RunReport,
    Status,
)

ENTITY_KEYS = COUNT_KEYS
MESSAGE_KEYS = tuple(MessageCounts.model_fields)
FIELD_KEYS = tuple(FieldCoverage.model_fields)
PHASES = PHASE_NAMES
MAX_ISSUE_ROWS = 200
EXAMPLES_PER_CODE = 3
_SECRET_NAME = re.compile(r"(api[_-]?key|write[_-]?key|secret|password|passwd|token|"
                          r"authorization|credential|application[_-]?id)", re.IGNORECASE)
MASK = "***"


# --------------------------------------------------------------------------- helpers

ReportLike = RunReport | dict[str, Any]


def as_report(report: ReportLike) -> RunReport:
    """The model, whether given the model or its stored JSON form."""
    return report if isinstance(report, RunReport) else RunReport.from_dict(report)


def _counts(part: Any) -> dict[str, int | float]:
    """A counts model (with any extra counts it carries) as name -> number."""
    return {k: _num(v) for k, v in part.model_dump().items()}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _pct(part: int | float, total: int | float) -> float | None:
    return None if not total else 100.0 * part / total


def _fmt_pct(pct: float | None) -> str:
    return "–" if pct is None else f"{pct:.1f}%"


def _fmt_num(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _fmt_seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _keys_in_order(known: tuple[str, ...], *dicts: dict[str, Any]) -> list[str]:
    """Known keys first in their usual order, then whatever else a report carries."""
    seen = [k for k in known if any(k in d for d in dicts)]
    for d in dicts:
        seen += [k for k in d if k not in seen]
    return seen


def entity_counts(report: ReportLike) -> dict[str, dict[str, int | float]]:
    return {name: _counts(counts) for name, counts in as_report(report).entities.items()}


def field_coverage(report: ReportLike) -> list[dict[str, Any]]:
    """One row per target field; percentages are of the records that field was mapped for."""
    rows = []
    for name, counts in as_report(report).fields.items():
        total = counts.total
        row: dict[str, Any] = {"field": name, "total": total}
        for key in FIELD_KEYS:
            row[key] = getattr(counts, key)
            row[f"{key}_pct"] = _pct(row[key], total)
        rows.append(row)
    return rows


def issue_summary(report: ReportLike) -> list[dict[str, Any]]:
    """Issue codes with their counts (most frequent first) and a few example ids."""
    report = as_report(report)
    counts: dict[str, int] = {str(code): n for code, n in report.issue_counts.items()}
    examples: dict[str, list[str]] = {}
    listed: dict[str, int] = {}
    for issue in report.issues:
        code = str(issue.code)
        listed[code] = listed.get(code, 0) + 1
        ids = examples.setdefault(code, [])
        ident = issue.id
        if ident not in (None, "") and len(ids) < EXAMPLES_PER_CODE and ident not in ids:
            ids.append(ident)
    # A code only present in the list (issue_counts missing or partial) still counts.
    for code, n in listed.items():
        counts[code] = max(counts.get(code, 0), n)
    return [{"code": code, "count": n, "examples": examples.get(code, [])}
            for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def phase_rows(report: ReportLike) -> list[tuple[str, float]]:
    phases = as_report(report).phases
    return [(name, float(phases[name])) for name in _keys_in_order(PHASES, phases)]


def scrub(value: Any) -> Any:
    """Mask values under key-like names (a second line of defence; the job excludes keys)."""
    if isinstance(value, dict):
        return {k: (MASK if _SECRET_NAME.search(str(k)) and v not in (None, "") else scrub(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


# --------------------------------------------------------------------------- JSON

def render_json(report: ReportLike) -> str:
    """The report exactly as stored, pretty-printed."""
    data = as_report(report).to_dict()
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                            default=str).decode()
    except TypeError:  # a value orjson cannot write (an integer wider than 64 bits)
        return json.dumps(data, indent=2, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- text

def _console(width: int, color: bool) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=color,
                   color_system="standard" if color else None, no_color=not color,
                   highlight=False, emoji=False, legacy_windows=False)


def _output(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def _count_pct(count: int | float, pct: float | None) -> Text:
    return Text(f"{_fmt_num(count)} ({_fmt_pct(pct)})")


def render_text(report: ReportLike, *, width: int = 120, color: bool = False) -> str:
    """A terminal summary: counts, field coverage, issues, phases, throughput."""
    report = as_report(report)
    console = _console(width, color)
    _text_header(console, report)
    _text_entities(console, report)
    _text_issues(console, report)  # what went wrong before the coverage detail
    _text_fields(console, report)
    report_sections.text_schema(console, report)
    report_sections.text_alerts(console, report)
    _text_phases(console, report)
    return _output(console)


_STATUS_STYLES = {Status.SUCCESS: "bold green", Status.PARTIAL: "bold yellow",
                  Status.INTERRUPTED: "bold yellow", Status.RUNNING: "bold cyan"}


def _text_header(console: Console, report: RunReport) -> None:
    status = str(report.status or "unknown")
    style = _STATUS_STYLES.get(report.status, "bold red")  # type: ignore[call-overload]
    title = Text("Run ", style="bold")
    title.append(report.run_id or "?", style="bold")
    title.append("  ")
    title.append(status.upper(), style=style)
    title.append(f"  mode {report.mode or '?'}")
    console.print(title)
    console.print(Text(
        f"{report.started_at or '?'} → {report.finished_at or '?'}"
        f" ({_fmt_seconds(report.duration_s)})"))
    console.print(Text(f"mapping {report.mapping_version or '?'}"))
    if report.error:
        console.print(Text(f"error: {report.error}", style="red"))
    if report.dry_run_note:
        console.print(Text(report.dry_run_note, style="bold yellow"))


def _counts_table(title: str, groups: dict[str, dict[str, Any]],
                  known: tuple[str, ...]) -> Table:
    """Counts as rows and entities (or message types) as columns: stays narrow."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("")
    for name in groups:
        table.add_column(Text(name), justify="right")
    for key in _keys_in_order(known, *groups.values()):
        table.add_row(key, *(_fmt_num(_num(counts.get(key))) for counts in groups.values()))
    return table


def _text_entities(console: Console, report: RunReport) -> None:
    entities = entity_counts(report)
    if entities:
        console.print(_counts_table("Records", entities, ENTITY_KEYS))
    messages = {k: _counts(v) for k, v in report.messages.items()}
    if messages:
        console.print(_counts_table("Messages", messages, MESSAGE_KEYS))


def _text_fields(console: Console, report: RunReport) -> None:
    rows = field_coverage(report)
    if not rows:
        console.print(Text("Field coverage: no fields recorded"))
        return
    # Wide terminals get "count (pct)" cells; narrow ones the percentages and one count
    # column, so the field path keeps most of the width.
    wide = console.width >= 110
    table = Table(title="Field coverage", box=box.SIMPLE_HEAD, title_justify="left",
                  caption=None if wide else "percentages of the records mapped",
                  caption_justify="left")
    table.add_column("field", overflow="fold", ratio=1)
    if not wide:
        table.add_column("records", justify="right", no_wrap=True)
    for key in FIELD_KEYS:
        table.add_column(key, justify="right", no_wrap=True)
    for row in rows:
        if wide:
            cells = [_count_pct(row[k], row[f"{k}_pct"]) for k in FIELD_KEYS]
        else:
            cells = [Text(_fmt_num(row["total"]))] + [Text(_fmt_pct(row[f"{k}_pct"]))
                                                     for k in FIELD_KEYS]
        table.add_row(Text(row["field"]), *cells)
    console.print(table)


def _text_issues(console: Console, report: RunReport) -> None:
    summary = issue_summary(report)
    if not summary:
        console.print(Text("Issues: none"))
        return
    table = Table(title="Issues", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("code")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    for row in summary:
        table.add_row(Text(row["code"]), _fmt_num(row["count"]), Text(", ".join(row["examples"])))
    console.print(table)


def _text_phases(console: Console, report: RunReport) -> None:
    phases = phase_rows(report)
    if phases:
        total = sum(seconds for _, seconds in phases)
        table = Table(title="Phases", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("phase")
        table.add_column("seconds", justify="right")
        table.add_column("share", justify="right")
        for name, seconds in phases:
            table.add_row(Text(name), f"{seconds:.2f}", _fmt_pct(_pct(seconds, total)))
        console.print(table)
    if report.throughput is not None:
        parts = [f"{k.replace('_per_s', '')}/s {_fmt_num(float(_num(v)))}"
                 for k, v in report.throughput.model_dump().items()]
        console.print(Text("Throughput: " + "  ".join(parts)))


# --------------------------------------------------------------------------- summary

# Codes that mean a record did not arrive come first: they are what an operator acts on.
FAILURE_CODES = ("DELIVERY_FAILED", "GAVE_UP", "REJECTED", "OVERSIZE", "METRICS_UNAVAILABLE")
SUMMARY_COUNTS = ("fetched", "delivered", "failed", "unchanged", "invalid")
SUMMARY_MAX_CODES = 8


def summary_issues(report: ReportLike) -> list[dict[str, Any]]:
    """`issue_summary`, delivery failures first, then the rest by count."""
    rows = issue_summary(report)
    return sorted(rows, key=lambda r: (r["code"] not in FAILURE_CODES, -r["count"], r["code"]))


def render_summary(report: ReportLike, *, width: int = 80, color: bool = False,
                   html_path: str | None = None) -> str:
    """The end-of-run summary of `sync` and `demo`: one screen at 80 columns.

    Status, counts per entity, issues by code (failures first), and where the full
    report is. The field-coverage table stays in `report show` and the HTML.
    """
    report = as_report(report)
    console = _console(max(40, width), color)
    status = str(report.status or "unknown")
    style = _STATUS_STYLES.get(report.status, "bold red")  # type: ignore[call-overload]
    title = Text(f"Run {report.run_id or '?'}  ", style="bold")
    title.append(status.upper(), style=style)
    title.append(f"  {report.mode or '?'}  {_fmt_seconds(report.duration_s)}")
    console.print(title)
    if report.error:
        console.print(Text(f"error: {report.error}", style="red"))
    if report.dry_run_note:
        console.print(Text(report.dry_run_note, style="yellow"))
    _summary_counts(console, report)
    _summary_issues(console, report)
    # Paths and commands are copied whole: never wrapped.
    console.print(Text(f"full report: moesif-segment report show {report.run_id or 'latest'}"),
                  soft_wrap=True)
    if html_path:
        console.print(Text(f"HTML report: {html_path}"), soft_wrap=True)
    return _output(console)


def _summary_counts(console: Console, report: RunReport) -> None:
    entities = entity_counts(report)
    if not entities:
        console.print(Text("no records fetched"))
        return
    keys = ("fetched", "changed", "unchanged", "invalid") if report.dry_run else SUMMARY_COUNTS
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("")
    for key in keys:
        table.add_column("would send" if report.dry_run and key == "changed" else key,
                         justify="right")
    for name, counts in entities.items():
        table.add_row(Text(name), *(_fmt_num(_num(counts.get(key))) for key in keys))
    console.print(table)


def _summary_issues(console: Console, report: RunReport) -> None:
    rows = summary_issues(report)
    if not rows:
        console.print(Text("issues: none"))
        return
    total = sum(r["count"] for r in rows)
    console.print(Text(f"issues: {total:,} (moesif-segment report issues "
                       f"{report.run_id or 'latest'})"))
    width = max(len(r["code"]) for r in rows[:SUMMARY_MAX_CODES])
    for row in rows[:SUMMARY_MAX_CODES]:
        style = "red" if row["code"] in FAILURE_CODES else ""
        line = Text(f"  {row['code']:<{width}} {row['count']:>8,}", style=style)
        if row["examples"]:
            line.append("  e.g. " + ", ".join(row["examples"][:2]), style="dim")
        line.truncate(console.width, overflow="ellipsis")
        console.print(line, no_wrap=True)
    if len(rows) > SUMMARY_MAX_CODES:
        console.print(Text(f"  ... and {len(rows) - SUMMARY_MAX_CODES} more codes"))


# --------------------------------------------------------------------------- HTML

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#667085;--line:#e4e7ec;
--ok:#12b76a;--warn:#f79009;--bad:#f04438;--info:#2e90fa;--idle:#98a2b3;--miss:#eaecf0;
--code:#f2f4f7}
@media (prefers-color-scheme:dark){:root{--bg:#0f131a;--card:#171c25;--ink:#e6e9ef;
--muted:#98a2b3;--line:#2a3140;--miss:#2a3140;--code:#11151c}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px}
header{display:flex;flex-wrap:wrap;align-items:center;gap:12px;margin-bottom:4px}
h1{font-size:20px;margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
h2{font-size:16px;margin:28px 0 10px}
.badge{border-radius:999px;padding:2px 10px;font-weight:600;font-size:12px;
text-transform:uppercase;letter-spacing:.03em;color:#fff}
.success{background:var(--ok)}.partial{background:var(--warn)}
.failed,.unknown{background:var(--bad)}.mode{background:var(--info)}
.meta{color:var(--muted);display:flex;flex-wrap:wrap;gap:4px 18px;margin:6px 0 10px}
.meta b{color:var(--ink);font-weight:600}
.note{border-left:4px solid var(--warn);background:var(--card);padding:8px 12px;margin:8px 0}
.note.error{border-color:var(--bad)}
nav a{color:var(--info);margin-right:14px;text-decoration:none}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px}
.card h3{margin:0 0 6px;font-size:15px;text-transform:capitalize}
.big{font-size:28px;font-weight:700}.big small{font-size:13px;color:var(--muted);
font-weight:400}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:12px;color:var(--muted);
margin:6px 0}
.dot{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:4px}
table{border-collapse:collapse;width:100%;background:var(--card);
border:1px solid var(--line);border-radius:10px;overflow:hidden}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.field{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;
word-break:break-all}
td.bar{width:32%;min-width:140px}
.tag{font-size:11px;color:var(--muted);margin-right:6px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:var(--code);border:1px solid var(--line);border-radius:8px;padding:10px;
margin:0;overflow:auto;max-height:480px;white-space:pre-wrap;word-break:break-word}
.sample{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:12px;margin-bottom:14px}
.sample h3{margin:0 0 8px;font-size:14px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.pair h4{margin:0 0 6px;font-size:12px;color:var(--muted);text-transform:uppercase}
@media (max-width:800px){.pair{grid-template-columns:1fr}}
.muted{color:var(--muted)}
.strip{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--warn);
border-radius:8px;padding:8px 12px;margin:10px 0;display:flex;flex-wrap:wrap;gap:6px 10px;
align-items:center}
.strip.ok{border-left-color:var(--ok)}
.chip{display:inline-block;border:1px solid var(--line);border-radius:999px;padding:1px 8px;
font-size:12px;color:var(--ink);text-decoration:none;background:var(--code)}
.chip.bad{border-color:var(--bad);color:var(--bad)}.chip.clean{color:var(--ok)}
.legend.wide{flex-direction:column;gap:2px}
details.key{margin:10px 0}details.key summary{cursor:pointer;color:var(--muted)}
footer{color:var(--muted);font-size:12px;margin-top:30px}
"""

_OUTCOME_COLORS = {"delivered": "var(--ok)", "changed": "var(--info)",
                   "unchanged": "var(--idle)", "invalid": "var(--warn)",
                   "failed": "var(--bad)", "gave_up": "#7a271a"}
_PHASE_COLORS = ("#2e90fa", "#7a5af8", "#12b76a", "#f79009", "#ee46bc", "#15b79e", "#98a2b3")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _stacked_bar(parts: list[tuple[str, float, str]], height: int = 14) -> str:
    """An inline SVG bar of (label, value, color) segments, proportional to their sum."""
    total = sum(max(0.0, v) for _, v, _ in parts)
    cells = [f'<rect x="0" y="0" width="100" height="{height}" style="fill:var(--miss)"/>']
    x = 0.0
    for label, value, color in parts:
        if total <= 0 or value <= 0:
            continue
        width = 100.0 * value / total
        # style= rather than fill=: var() is only reliable in CSS, not in SVG attributes.
        tip = f"{_e(label)}: {_e(_fmt_num(value))}"
        cells.append(f'<rect x="{x:.3f}" y="0" width="{width:.3f}" height="{height}" '
                     f'style="fill:{color}"><title>{tip}</title></rect>')
        x += width
    return (f'<svg role="img" width="100%" height="{height}" viewBox="0 0 100 {height}" '
            f'preserveAspectRatio="none">'
            + "".join(cells) + "</svg>")


def _legend(parts: list[tuple[str, float, str]]) -> str:
    items = "".join(f'<span><i class="dot" style="background:{color}"></i>{_e(label)} '
                    f'<b>{_e(_fmt_num(value))}</b></span>' for label, value, color in parts)
    return f'<div class="legend">{items}</div>'


def _table(headers: list[tuple[str, bool]], rows: list[str], cls: str = "") -> str:
    head = "".join(('<th class="n">' if numeric else "<th>") + f"{_e(h)}</th>"
                   for h, numeric in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    opening = f'<table class="{cls}">' if cls else "<table>"
    return f'{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: ReportLike) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no external fetches."""
    report = as_report(report)
    run_id = _e(report.run_id or "?")
    sections = [
        _html_header(report),
        _html_issue_strip(report),
        _html_outcomes(report),
        _html_issues(report),  # what went wrong before the coverage detail
        _html_coverage(report),
        report_sections.html_alerts(report),
        report_sections.html_schema(report),
        _html_phases(report),
        _html_samples(report),
        _html_settings(report),
    ]
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        # The page may fetch nothing at all, even if a value slipped through escaping.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>Sync report {run_id}</title><style>{_CSS}</style></head><body><main>"
        + "".join(sections)
        + "<footer>moesif-segment-connector mapping report · personal fields masked by the "
          "mapping · keys are never included</footer></main></body></html>\n"
    )


_STATUS_CLASSES = {Status.SUCCESS: "success", Status.PARTIAL: "partial",
                   Status.INTERRUPTED: "partial", Status.RUNNING: "mode",
                   Status.FAILED: "failed"}


def _html_header(report: RunReport) -> str:
    status = str(report.status or "unknown")
    status_cls = _STATUS_CLASSES.get(report.status, "unknown")  # type: ignore[call-overload]
    meta: list[tuple[str, Any]] = [
        ("started", report.started_at), ("finished", report.finished_at),
        ("duration", _fmt_seconds(report.duration_s)), ("mapping", report.mapping_version)]
    if report.throughput is not None:
        for key, value in report.throughput.model_dump().items():
            meta.append((key.replace("_per_s", "/s").replace("_", " "),
                         _fmt_num(float(_num(value)))))
    parts = [
        f'<header><h1>{_e(report.run_id or "?")}</h1>'
        f'<span class="badge {status_cls}">{_e(status)}</span>'
        f'<span class="badge mode">{_e(report.mode or "?")}</span></header>',
        '<div class="meta">' + "".join(f"<span>{_e(k)} <b>{_e(v if v is not None else '–')}"
                                       f"</b></span>" for k, v in meta) + "</div>",
    ]
    if report.error:
        parts.append(f'<div class="note error"><b>error:</b> {_e(report.error)}</div>')
    if report.dry_run_note:
        parts.append(f'<div class="note">{_e(report.dry_run_note)}</div>')
    parts.append('<nav><a href="#outcomes">outcomes</a><a href="#issues">issues</a>'
                 '<a href="#coverage">field coverage</a><a href="#phases">phases</a>'
                 '<a href="#samples">samples</a><a href="#settings">settings</a></nav>')
    return "".join(parts)


def _outcome_parts(counts: dict[str, int | float], dry_run: bool) -> list[tuple[str, float, str]]:
    first = ("changed", "would send") if dry_run else ("delivered", "delivered")
    names = [first, ("unchanged", "unchanged"), ("invalid", "invalid")]
    if not dry_run:
        names += [("failed", "failed"), ("gave_up", "gave up")]
    return [(label, counts.get(key, 0), _OUTCOME_COLORS[key]) for key, label in names]


def _html_outcomes(report: RunReport) -> str:
    entities = entity_counts(report)
    dry_run = report.dry_run
    cards = []
    for name, counts in entities.items():
        parts = _outcome_parts(counts, dry_run)
        keys = _keys_in_order(ENTITY_KEYS, counts)
        rows = "".join(f'<tr><td>{_e(k)}</td><td class="n">{_e(_fmt_num(counts[k]))}</td></tr>'
                       for k in keys)
        cards.append(
            f'<div class="card"><h3>{_e(name)}</h3>'
            f'<div class="big">{_e(_fmt_num(counts.get("fetched", 0)))} <small>fetched</small>'
            f"</div>{_stacked_bar(parts, 18)}{_legend(parts)}"
            f'<table class="counts"><tbody>{rows}</tbody></table></div>')
    messages = {k: _counts(v) for k, v in report.messages.items()}
    msg_html = ""
    if messages:
        keys = _keys_in_order(MESSAGE_KEYS, *messages.values())
        rows = [f'<tr><td>{_e(name)}</td>'
                + "".join(f'<td class="n">{_e(_fmt_num(_num(c.get(k))))}</td>' for k in keys)
                + "</tr>" for name, c in messages.items()]
        msg_html = "<h2>Messages</h2>" + _table([("type", False)] + [(k, True) for k in keys],
                                                rows)
    body = ('<div class="cards">' + "".join(cards) + "</div>") if cards else \
        '<p class="muted">no entity counts recorded</p>'
    return (f'<section id="outcomes"><h2>Outcomes</h2>{body}{_html_legend()}{msg_html}'
            "</section>")


def _coverage_color(pct: float | None) -> str:
    if pct is None:
        return "var(--idle)"
    return "var(--ok)" if pct >= 90 else "var(--info)" if pct >= 50 else "var(--warn)"


def _html_coverage(report: RunReport) -> str:
    rows = []
    for row in field_coverage(report):
        kind, _, path = row["field"].partition(".")
        label = (f'<span class="tag">{_e(kind)}</span>{_e(path)}' if path else _e(kind))
        bar = _stacked_bar([("present", row["present"], _coverage_color(row["present_pct"])),
                            ("missing", row["missing"], "var(--miss)")])
        cells = "".join(
            f'<td class="n">{_e(_fmt_num(row[k]))} '
            f'<span class="muted">{_e(_fmt_pct(row[k + "_pct"]))}</span></td>'
            for k in FIELD_KEYS)
        rows.append(f'<tr class="field-row" data-field="{_e(row["field"])}">'
                    f'<td class="field">{label}</td><td class="bar">{bar}</td>{cells}</tr>')
    headers = [("field", False), ("coverage", False)] + [(k, True) for k in FIELD_KEYS]
    return ('<section id="coverage"><h2>Field coverage</h2>'
            '<p class="muted">percentages are of the records each field was mapped for '
            "(present + missing)</p>" + _table(headers, rows, "coverage") + "</section>")


def _html_issues(report: RunReport) -> str:
    summary = issue_summary(report)
    code_rows = [f'<tr><td><code>{_e(s["code"])}</code></td>'
                 f'<td class="n">{_e(_fmt_num(s["count"]))}</td>'
                 f'<td>{_e(", ".join(s["examples"]))}</td></tr>' for s in summary]
    issues = report.issues
    anchors = _sample_anchors(report)
    detail_rows = []
    for issue in issues[:MAX_ISSUE_ROWS]:
        attempts = "" if issue.attempts is None else issue.attempts
        ident = f"<code>{_e(issue.id)}</code>"
        anchor = anchors.get((issue.entity, issue.id))
        if anchor:
            ident = f'<a href="#{anchor}" title="see its sample">{ident}</a>'
        detail_rows.append(
            f'<tr><td>{_e(issue.entity)}</td><td>{ident}</td>'
            f'<td><code>{_e(issue.code)}</code></td><td>{_e(issue.detail)}</td>'
            f'<td class="n">{_e(attempts)}</td></tr>')
    shown = (f'<p class="muted">showing the first {MAX_ISSUE_ROWS} of {len(issues):,} issues'
             " (the JSON report has them all)</p>" if len(issues) > MAX_ISSUE_ROWS else "")
    return ('<section id="issues"><h2>Issues</h2>'
            + _table([("code", False), ("count", True), ("examples", False)], code_rows,
                     "issue-codes")
            + "<h2>Issue list</h2>" + shown
            + _table([("entity", False), ("id", False), ("code", False), ("detail", False),
                      ("attempts", True)], detail_rows, "issue-list")
            + "</section>")


def _html_phases(report: RunReport) -> str:
    phases = phase_rows(report)
    if not phases:
        return '<section id="phases"><h2>Phases</h2><p class="muted">not recorded</p></section>'
    parts = [(name, seconds, _PHASE_COLORS[i % len(_PHASE_COLORS)])
             for i, (name, seconds) in enumerate(phases)]
    total = sum(seconds for _, seconds in phases)
    rows = [f'<tr><td>{_e(name)}</td><td class="n">{seconds:.2f} s</td>'
            f'<td class="n">{_e(_fmt_pct(_pct(seconds, total)))}</td></tr>'
            for name, seconds in phases]
    return ('<section id="phases"><h2>Phases</h2>' + _stacked_bar(parts, 18) + _legend(parts)
            + _table([("phase", False), ("duration", True), ("share", True)], rows)
            + "</section>")


def _pretty(value: Any) -> str:
    return _e(json.dumps(scrub(value), indent=2, ensure_ascii=False, default=str))


def _sample_anchors(report: RunReport) -> dict[tuple[str, str | None], str]:
    """(entity, id) -> the HTML id of its sample (the first one)."""
    anchors: dict[tuple[str, str | None], str] = {}
    for i, sample in enumerate(report.samples):
        anchors.setdefault((sample.entity, sample.id), f"sample-{i}")
    return anchors


def _issue_codes_by_record(report: RunReport) -> dict[tuple[str, str | None], list[str]]:
    codes: dict[tuple[str, str | None], list[str]] = {}
    for issue in report.issues:
        listed = codes.setdefault((issue.entity, issue.id), [])
        if str(issue.code) not in listed:
            listed.append(str(issue.code))
    return codes


def _sample_messages(messages: list[Any]) -> str:
    if not messages:
        return '<p class="muted">nothing was sent for this record (see its issue)</p>'
    return f"<pre>{_pretty(messages)}</pre>"


_LEGEND = (
    ("var(--ok)", "delivered", "Segment confirmed the record's messages"),
    ("var(--info)", "would send", "dry run: what a real run would send"),
    ("var(--idle)", "unchanged", "same as last delivered: not sent again"),
    ("var(--warn)", "invalid", "could not be sent as it is (see its issue); not retried"),
    ("var(--bad)", "failed", "refused, or sent but not confirmed; retried next run"),
    ("#7a271a", "gave up", "refused SYNC_MAX_ATTEMPTS times: not retried"),
)
_TERMS = ("<b>present</b>: the field had a value · <b>missing</b>: no value in Moesif · "
          "<b>converted</b>: the value was changed to the type Segment takes (e.g. a date to "
          "ISO 8601, a number from text) · <b>trimmed</b>: dropped to fit Segment's 32 KB")


def _html_legend() -> str:
    items = "".join(f'<span><i class="dot" style="background:{color}"></i><b>{_e(name)}</b>'
                    f" {_e(meaning)}</span>" for color, name, meaning in _LEGEND)
    return (f'<details class="key" open><summary>What the colours and words mean'
            f'</summary><div class="legend wide">{items}</div>'
            f'<p class="muted">{_TERMS}</p></details>')


def _html_issue_strip(report: RunReport) -> str:
    """The issue count and the codes, first thing under the header."""
    summary = summary_issues(report)
    if not summary:
        return '<div class="strip ok"><b>No issues</b> in this run.</div>'
    total = sum(s["count"] for s in summary)
    chips = "".join(
        f'<a class="chip{" bad" if s["code"] in FAILURE_CODES else ""}" href="#issues">'
        f'<code>{_e(s["code"])}</code> <b>{_e(_fmt_num(s["count"]))}</b></a>' for s in summary)
    return (f'<div class="strip"><b>{_e(_fmt_num(total))} issue'
            f'{"" if total == 1 else "s"}</b> {chips}</div>')


def _html_samples(report: RunReport) -> str:
    codes = _issue_codes_by_record(report)
    order = sorted(enumerate(report.samples),
                   key=lambda item: not codes.get((item[1].entity, item[1].id)))
    blocks = []
    for i, sample in order:
        found = codes.get((sample.entity, sample.id), [])
        tags = "".join(f'<span class="chip{" bad" if c in FAILURE_CODES else ""}">'
                       f"<code>{_e(c)}</code></span>" for c in found) or \
            '<span class="chip clean">clean</span>'
        blocks.append(
            f'<div class="sample" id="sample-{i}"><h3>{_e(sample.entity)} '
            f'<code>{_e(sample.id)}</code> {tags}</h3><div class="pair">'
            f'<div><h4>Moesif source record</h4><pre>{_pretty(sample.source)}</pre></div>'
            f'<div><h4>Segment messages</h4>{_sample_messages(sample.messages)}</div>'
            "</div></div>")
    body = "".join(blocks) or '<p class="muted">no samples in this report</p>'
    return f'<section id="samples"><h2>Sample mappings</h2>{body}</section>'


def _html_settings(report: RunReport) -> str:
    settings = scrub(report.settings.model_dump(exclude_none=True))
    rows = [f"<tr><td><code>{_e(k)}</code></td><td>{_e(v)}</td></tr>"
            for k, v in settings.items()]
    return ('<section id="settings"><h2>Settings</h2>'
            + _table([("setting", False), ("value", False)], rows) + "</section>")


# --------------------------------------------------------------------------- diff

def _delta(a: Any, b: Any) -> dict[str, Any]:
    a_num = a if isinstance(a, int | float) else None
    b_num = b if isinstance(b, int | float) else None
    delta = None if a_num is None or b_num is None else b_num - a_num
    if isinstance(delta, float):
        delta = round(delta, 3)
    return {"a": a_num, "b": b_num, "delta": delta}


def _ident(report: RunReport) -> dict[str, Any]:
    return {"run_id": report.run_id, "started_at": report.started_at,
            "mode": None if report.mode is None else str(report.mode),
            "status": str(report.status), "mapping_version": report.mapping_version}


def _count_deltas(a: dict[str, Any], b: dict[str, Any],
                  known: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in _keys_in_order((), a, b):
        ca = _counts(a[name]) if name in a else {}
        cb = _counts(b[name]) if name in b else {}
        out[name] = {k: _delta(_num(ca.get(k)), _num(cb.get(k)))
                     for k in _keys_in_order(known, ca, cb)}
    return out


def diff_reports(a: ReportLike, b: ReportLike) -> dict[str, Any]:
    """What moved from run `a` to run `b`: counts, coverage, issue codes, status."""
    a, b = as_report(a), as_report(b)
    fields_a = {r["field"]: r for r in field_coverage(a)}
    fields_b = {r["field"]: r for r in field_coverage(b)}
    fields = {}
    for name in _keys_in_order((), fields_a, fields_b):
        ra, rb = fields_a.get(name, {}), fields_b.get(name, {})
        entry = {"present_pct": _delta(ra.get("present_pct"), rb.get("present_pct"))}
        for key in FIELD_KEYS:
            entry[key] = _delta(ra.get(key), rb.get(key))
        fields[name] = entry
    codes_a = {s["code"]: s["count"] for s in issue_summary(a)}
    codes_b = {s["code"]: s["count"] for s in issue_summary(b)}
    resolved = _resolved_codes(a, b, codes_a, codes_b)
    gone = _gone_fields(fields_a, fields_b)
    return {
        "a": _ident(a),
        "b": _ident(b),
        "status": {"a": str(a.status), "b": str(b.status), "changed": a.status != b.status},
        "entities": _count_deltas(a.entities, b.entities, ENTITY_KEYS),
        "messages": _count_deltas(a.messages, b.messages, MESSAGE_KEYS),
        "fields": fields,
        "fields_added": [f for f in fields_b if f not in fields_a],
        "fields_removed": gone,
        "fields_not_mapped": [f for f in fields_a if f not in fields_b and f not in gone],
        "issues": {
            "new": {c: n for c, n in codes_b.items() if c not in codes_a},
            "resolved": resolved,
            "not_seen": {c: n for c, n in codes_a.items()
                         if c not in codes_b and c not in resolved},
            "changed": {c: _delta(codes_a[c], codes_b[c]) for c in codes_b
                        if c in codes_a and codes_a[c] != codes_b[c]},
        },
        "duration_s": _delta(a.duration_s, b.duration_s),
        "schema": report_sections.diff_schema(a, b),
    }


def _saw_everything(report: RunReport) -> bool:
    """A full run that finished fetched every record: an absent issue was not seen again."""
    return str(report.mode) == "full" and report.status in (Status.SUCCESS, Status.PARTIAL)


def _resolved_codes(a: RunReport, b: RunReport, codes_a: dict[str, int],
                    codes_b: dict[str, int]) -> dict[str, int]:
    """Codes of run `a` absent from run `b` whose records `b` saw again without them.

    A record is known to be seen again when `b` was a finished full run, or when `b`
    reported it under another code. An incremental run that did not fetch a record says
    nothing about it: such codes are "not seen", not "resolved".
    """
    gone = {c: n for c, n in codes_a.items() if c not in codes_b}
    if _saw_everything(b):
        return gone
    seen = {(i.entity, i.id) for i in b.issues if i.id}
    resolved: dict[str, int] = {}
    for issue in a.issues:
        code = str(issue.code)
        if code in gone and issue.id and (issue.entity, issue.id) in seen:
            resolved[code] = resolved.get(code, 0) + 1
    return resolved


def _gone_fields(fields_a: dict[str, Any], fields_b: dict[str, Any]) -> list[str]:
    """Fields of run `a` that run `b` left out although it mapped records of that kind
    (identify/group); a field missing only because `b` mapped no such record is not gone."""
    mapped = {name.partition(".")[0] for name, row in fields_b.items() if row.get("total")}
    return [f for f in fields_a if f not in fields_b and f.partition(".")[0] in mapped]


def _signed(value: Any, suffix: str = "") -> str:
    if value is None:
        return "–"
    text = f"{value:+,.1f}" if isinstance(value, float) else f"{value:+,}"
    return text + suffix


def _moved(entry: dict[str, Any]) -> bool:
    return entry["delta"] not in (None, 0, 0.0)


def render_diff_text(d: dict[str, Any], *, width: int = 100, color: bool = False) -> str:
    console = _console(width, color)
    a, b = _dict(d.get("a")), _dict(d.get("b"))
    console.print(Text(f"{a.get('run_id')} ({a.get('mode')}) → {b.get('run_id')} "
                       f"({b.get('mode')})", style="bold"))
    status = _dict(d.get("status"))
    console.print(Text(f"status: {status.get('a')} → {status.get('b')}"
                       + ("" if status.get("changed") else " (unchanged)")))
    _diff_counts(console, "Record counts that moved", _dict(d.get("entities")))
    _diff_counts(console, "Message counts that moved", _dict(d.get("messages")))
    _diff_fields(console, d)
    _diff_issues(console, _dict(d.get("issues")))
    report_sections.diff_schema_text(console, d)
    duration = _dict(d.get("duration_s"))
    if duration.get("a") is not None and duration.get("b") is not None:
        console.print(Text(f"duration: {_fmt_seconds(duration['a'])} → "
                           f"{_fmt_seconds(duration['b'])} ({_signed(duration['delta'], ' s')})"))
    return _output(console)


def _diff_counts(console: Console, title: str, groups: dict[str, Any]) -> None:
    rows = [(name, key, entry) for name, counts in groups.items()
            for key, entry in _dict(counts).items() if _moved(entry)]
    if not rows:
        console.print(Text(f"{title}: none"))
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for col, justify in (("", "left"), ("count", "left"), ("before", "right"),
                         ("after", "right"), ("change", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, key, entry in rows:
        table.add_row(Text(name), Text(key), _fmt_num(entry["a"]), _fmt_num(entry["b"]),
                      _signed(entry["delta"]))
    console.print(table)


def _diff_fields(console: Console, d: dict[str, Any]) -> None:
    fields = _dict(d.get("fields"))
    added, removed = _list(d.get("fields_added")), _list(d.get("fields_removed"))
    moved = [(name, e) for name, e in fields.items()
             if name not in added and name not in removed
             and (_moved(e["present_pct"]) or any(_moved(e[k]) for k in FIELD_KEYS))]
    if moved:
        table = Table(title="Field coverage that moved", box=box.SIMPLE_HEAD,
                      title_justify="left")
        table.add_column("field", overflow="fold")
        table.add_column("present before", justify="right")
        table.add_column("present after", justify="right")
        table.add_column("change", justify="right")
        table.add_column("other counts", overflow="fold")
        for name, e in moved:
            others = ", ".join(f"{k} {_signed(e[k]['delta'])}" for k in FIELD_KEYS[1:]
                               if _moved(e[k]))
            table.add_row(Text(name), _fmt_pct(e["present_pct"]["a"]),
                          _fmt_pct(e["present_pct"]["b"]),
                          _signed(e["present_pct"]["delta"], " pts"), Text(others))
        console.print(table)
    else:
        console.print(Text("Field coverage that moved: none"))
    if added:
        console.print(Text("fields new in the second run: " + ", ".join(map(str, added))))
    if removed:
        console.print(Text("fields gone in the second run (its records lacked them): "
                           + ", ".join(map(str, removed))))
    not_mapped = _list(d.get("fields_not_mapped"))
    if not_mapped:
        console.print(Text("fields not mapped in the second run (no such records): "
                           + ", ".join(map(str, not_mapped))))


def _diff_issues(console: Console, issues: dict[str, Any]) -> None:
    new, resolved = _dict(issues.get("new")), _dict(issues.get("resolved"))
    not_seen = _dict(issues.get("not_seen"))
    changed = _dict(issues.get("changed"))
    if not (new or resolved or changed or not_seen):
        console.print(Text("Issue codes: no change"))
        return
    for label, codes in (("new issue codes", new), ("resolved issue codes", resolved),
                         ("issue codes absent, records not fetched again", not_seen)):
        if codes:
            console.print(Text(f"{label}: " + ", ".join(f"{c} ({n:,})" for c, n in
                                                        codes.items())))
    if changed:
        console.print(Text("issue counts that moved: " + ", ".join(
            f"{c} {e['a']:,} → {e['b']:,}" for c, e in changed.items())))
