"""`report list | show | diff` against a real state file holding real stored reports."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from connector.reports.cli import report_app
from connector.reports.store import ReportStore
from connector.state.store import connect
from tests.backends import pg_url  # noqa: F401  (fixture)

RUN_1 = "20261122T050000Z-a1b2c3"
RUN_2 = "20261122T051500Z-d4e5f6"
RUN_3 = "20261122T053000Z-0789ab"
FIELDS = ["identify.userId", "identify.traits.email", "identify.traits.name",
          "identify.traits.createdAt", "identify.traits.company.id",
          "identify.context.location.city", "group.groupId", "group.traits.name",
          "group.traits.website"]


def make_report(run_id: str, minute: int, *, status: str, mode: str = "incremental",
                email_present: int, issues: list[tuple[str, str, str]]) -> dict:
    started = f"2026-11-22T05:{minute:02d}:00.000Z"
    users = {"fetched": 120, "changed": 110, "unchanged": 6, "invalid": 4, "sent": 110,
             "delivered": 110 if status == "success" else 104,
             "failed": 0 if status == "success" else 6, "retried": 0, "gave_up": 0}
    if mode == "dry-run":
        users.update(sent=0, delivered=0, failed=0)
    fields = {name: {"present": 116, "missing": 0, "converted": 0, "trimmed": 0}
              for name in FIELDS}
    fields["identify.traits.email"] = {"present": email_present, "missing": 116 - email_present,
                                       "converted": 0, "trimmed": 0}
    fields["identify.traits.createdAt"]["converted"] = 116
    issue_list = [{"entity": e, "id": i, "code": c, "detail": f"{c.lower()} on {i}",
                   "attempts": 1} for e, i, c in issues]
    counts: dict[str, int] = {}
    for issue in issue_list:
        counts[issue["code"]] = counts.get(issue["code"], 0) + 1
    report = {
        "run_id": run_id, "started_at": started, "finished_at": started[:-5] + "4.200Z",
        "mode": mode, "status": status, "error": None, "mapping_version": "users:1+companies:1",
        "settings": {"moesif_api_url": "http://127.0.0.1:9001",
                     "segment_host": "http://127.0.0.1:9002", "page_size": 50},
        "entities": {"users": users,
                     "companies": {"fetched": 12, "changed": 12, "unchanged": 0, "invalid": 0,
                                   "sent": 12, "delivered": 12, "failed": 0, "retried": 0,
                                   "gave_up": 0}},
        "messages": {"identify": {"sent": 110, "delivered": users["delivered"],
                                  "failed": users["failed"]},
                     "group": {"sent": 90, "delivered": 90, "failed": 0}},
        "fields": fields, "issues": issue_list, "issue_counts": counts,
        "phases": {"fetch": 1.5, "map": 0.4, "diff": 0.1, "send": 2.0, "store": 0.2},
        "duration_s": 4.2, "throughput": {"records_per_s": 31.0, "messages_per_s": 47.6},
        "samples": [{"entity": "users", "id": "usr_7",
                     "source": {"user_id": "usr_7", "email": "a***@example.org",
                                "metadata": {"note": "</pre><a href='https://evil.test'>x</a>"}},
                     "messages": [{"type": "identify", "userId": "usr_7",
                                   "traits": {"email": "a***@example.org"}}]}],
    }
    if mode == "dry-run":
        report["dry_run_note"] = "dry run: nothing was sent and no state moved"
    return report


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)
    for name in ("SYNC_INTERVAL", "SYNC_CRON", "REPORT_KEEP_RUNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONNECTOR_HOME", str(home))
    return home


@pytest.fixture
def reports(home):
    saved = [
        make_report(RUN_1, 0, status="partial", email_present=58,
                    issues=[("users", "usr_a", "MISSING_ID"), ("users", "usr_b", "MISSING_ID"),
                            ("users", "usr_c", "DELIVERY_FAILED")]),
        make_report(RUN_2, 15, status="success", email_present=116,
                    issues=[("users", "usr_d", "BAD_TIMESTAMP"),
                            ("users", "usr_e", "OVERSIZE_TRIMMED")]),
        make_report(RUN_3, 30, status="success", mode="dry-run", email_present=116, issues=[]),
    ]
    conn = connect(home / "state.sqlite3")
    store = ReportStore(conn)
    for report in saved:
        store.save(report, keep=10)
    store.start("20261122T054500Z-runnin", "2026-11-22T05:45:00.000Z", "incremental")
    conn.close()
    return saved


runner = CliRunner()


def invoke(*args: str, columns: int = 160):
    return runner.invoke(report_app, list(args), env={"COLUMNS": str(columns)})


def test_list_shows_runs_newest_first_with_counts(reports):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    order = [next(i for i, ln in enumerate(lines) if rid in ln)
             for rid in ("20261122T054500Z-runnin", RUN_3, RUN_2, RUN_1)]
    assert order == sorted(order)
    row = next(ln for ln in lines if RUN_1 in ln)
    assert "partial" in row and "120/104/6" in row and "12/12/0" in row
    assert "2026-11-22 05:00:00" in row and "4.2 s" in row and "incremental" in row
    assert "running" in next(ln for ln in lines if "runnin" in ln)
    assert "dry-run" in next(ln for ln in lines if RUN_3 in ln)


def test_list_at_80_columns_keeps_status_mode_duration_and_counts(reports):
    result = invoke("list", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    i = next(i for i, ln in enumerate(lines) if RUN_1 in ln)
    assert "partial" in lines[i] and "incremental" in lines[i] and "4.2 s" in lines[i]
    assert "users 120/104/6" in lines[i + 1] and "companies 12/12/0" in lines[i + 1]


def test_issues_lists_detail_filtered_by_code_and_entity(reports):
    result = invoke("issues", RUN_1, "--code", "missing_id", columns=80)
    assert result.exit_code == 0, result.output
    assert "usr_a" in result.stdout and "usr_b" in result.stdout
    assert "DELIVERY_FAILED" not in result.stdout
    assert max(len(ln) for ln in result.stdout.splitlines()) <= 80
    lines = invoke("issues", RUN_1, "--entity", "users", "--json").stdout.splitlines()
    assert sorted(json.loads(ln)["id"] for ln in lines) == ["usr_a", "usr_b", "usr_c"]
    assert "no issues" in invoke("issues", RUN_1, "--entity", "companies").stdout
    assert "match" in invoke("issues", RUN_1, "--code", "NOPE").stdout
    assert invoke("issues", "no-such-run").exit_code == 2


def test_show_text_fits_80_columns(reports):
    result = invoke("show", RUN_1, columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    email = next(ln for ln in lines if "identify.traits.email" in ln)
    assert "50.0%" in email
    issues_at = next(i for i, ln in enumerate(lines) if ln.startswith("Issues"))
    assert issues_at < next(i for i, ln in enumerate(lines) if "Field coverage" in ln)


def test_list_limit_and_empty_home(reports, home):
    result = invoke("list", "--limit", "2")
    assert result.exit_code == 0 and RUN_3 in result.stdout and RUN_2 not in result.stdout


def test_list_without_any_state(home):
    result = invoke("list")
    assert result.exit_code == 0 and "no runs recorded yet" in result.stdout
    assert not (home / "state.sqlite3").exists()  # reading never creates state


def test_show_with_no_runs_is_a_usage_mistake(home):
    for args in (("show",), ("show", "latest", "--format", "json"), ("diff", "a", "b")):
        result = invoke(*args)
        assert result.exit_code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no runs recorded yet")
    assert not (home / "state.sqlite3").exists()


def test_show_latest_text(reports):
    result = invoke("show")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert RUN_3 in out and "dry run: nothing was sent" in out
    assert "identify.traits.email" in out and "116 (100.0%)" in out
    result = invoke("show", RUN_1)
    email = next(ln for ln in result.stdout.splitlines() if "identify.traits.email" in ln)
    assert "58 (50.0%)" in email
    codes = next(ln for ln in result.stdout.splitlines() if "MISSING_ID" in ln)
    assert "2" in codes and "usr_a, usr_b" in codes


def test_show_by_prefix_json_is_exactly_the_stored_report(reports):
    result = invoke("show", RUN_2[:20], "--format", "json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert {k: shown[k] for k in reports[1]} == reports[1]  # every stored key, unchanged
    assert shown["report_version"] == 1


def test_show_unknown_or_ambiguous_exits_2_and_running_exits_1(reports):
    unknown = invoke("show", "nope")
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("error: no run with id 'nope'")
    assert len(unknown.stderr.strip().splitlines()) == 1
    ambiguous = invoke("show", "20261122T05")
    assert ambiguous.exit_code == 2 and "matches" in ambiguous.stderr
    running = invoke("show", "20261122T054500Z")
    assert running.exit_code == 1 and "still running" in running.stderr


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attributes = dict(attrs)
        if "field-row" in (attributes.get("class") or ""):
            self.fields.append(attributes.get("data-field") or "")
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action")]


def test_show_html_writes_a_self_contained_file_under_home(reports, home):
    result = invoke("show", RUN_1, "--format", "html")
    assert result.exit_code == 0, result.output
    path = home / "reports" / f"{RUN_1}.html"
    assert result.stdout.strip() == str(path)
    document = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(document)
    assert sorted(page.fields) == sorted(FIELDS)
    assert all(url.startswith("#") for url in page.urls), page.urls
    assert not page.tags & {"script", "img", "link", "iframe"}
    assert "https://evil.test" not in [u for u in page.urls]
    assert "&lt;/pre&gt;&lt;a href=" in document  # the sample's markup is text, not markup


def test_show_html_with_output_path(reports, tmp_path):
    target = tmp_path / "out" / "report.html"
    result = invoke("show", "latest", "--format", "html", "--output", str(target))
    assert result.exit_code == 0 and result.stdout.strip() == str(target)
    assert target.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_diff_text_and_json(reports):
    result = invoke("diff", RUN_1, RUN_2)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "partial → success" in out
    assert "identify.traits.email" in out and "+50.0 pts" in out
    assert "new issue codes: BAD_TIMESTAMP (1), OVERSIZE_TRIMMED (1)" in out
    # RUN_2 is incremental: the records behind those codes were not fetched again.
    assert ("issue codes absent, records not fetched again: MISSING_ID (2), "
            "DELIVERY_FAILED (1)") in out
    data = json.loads(invoke("diff", RUN_1, RUN_2, "--format", "json").stdout)
    assert data["entities"]["users"]["failed"] == {"a": 6, "b": 0, "delta": -6}
    assert data["status"]["changed"] is True


def test_diff_with_unknown_run_exits_2(reports):
    result = invoke("diff", RUN_1, "missing")
    assert result.exit_code == 2 and "missing" in result.stderr


def test_bad_settings_exit_2(reports, monkeypatch):
    monkeypatch.setenv("REPORT_KEEP_RUNS", "zero")
    result = invoke("list")
    assert result.exit_code == 2
    assert "REPORT_KEEP_RUNS" in result.stderr


def test_an_empty_postgresql_state_is_named_not_the_home(home, monkeypatch, pg_url):  # noqa: F811
    monkeypatch.setenv("STATE_URL", pg_url)
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert "no runs recorded yet in postgresql://" in result.stdout
    assert str(home) not in result.stdout
