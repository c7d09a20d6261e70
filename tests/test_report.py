"""Report renderers: text, JSON, HTML and diff, on realistic and on broken reports."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from connector.reports.render import (
    diff_reports,
    field_coverage,
    issue_summary,
    render_diff_text,
    render_html,
    render_json,
    render_text,
)

USER_FIELDS = ["identify.userId", "identify.traits.email", "identify.traits.name",
               "identify.traits.createdAt", "identify.traits.company",
               "identify.traits.metadata", "identify.context.ip"]
GROUP_FIELDS = ["group.groupId", "group.traits.name", "group.traits.website"]


def make_report(run_id: str = "20261122T053000Z-1a2b3c", *, email_present: int = 90,
                status: str = "partial", mode: str = "incremental",
                extra_issue: str | None = None) -> dict:
    users = {"fetched": 100, "changed": 95, "unchanged": 3, "invalid": 2, "sent": 95,
             "delivered": 93, "failed": 2, "retried": 1, "gave_up": 0}
    companies = {"fetched": 10, "changed": 10, "unchanged": 0, "invalid": 0, "sent": 10,
                 "delivered": 10, "failed": 0, "retried": 0, "gave_up": 0}
    fields = {f: {"present": 98, "missing": 0, "converted": 0, "trimmed": 0}
              for f in USER_FIELDS + GROUP_FIELDS}
    fields["identify.traits.email"] = {"present": email_present, "missing": 98 - email_present,
                                       "converted": 0, "trimmed": 0}
    fields["identify.traits.createdAt"]["converted"] = 98
    fields["identify.traits.metadata"]["trimmed"] = 1
    issues = [{"entity": "users", "id": f"usr_bad{i}", "code": "MISSING_ID",
               "detail": "no user_id", "attempts": 1} for i in range(2)]
    issues += [{"entity": "users", "id": f"usr_{i}", "code": "DELIVERY_FAILED",
                "detail": "HTTP 500 <from Segment>", "attempts": 2} for i in range(250)]
    if extra_issue:
        issues.append({"entity": "companies", "id": "cmp_9", "code": extra_issue,
                       "detail": "x", "attempts": 1})
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue["code"]] = counts.get(issue["code"], 0) + 1
    report = {
        "run_id": run_id, "started_at": "2026-11-22T05:30:00.000Z",
        "finished_at": "2026-11-22T05:30:03.900Z", "mode": mode, "status": status,
        "error": None, "mapping_version": "users:1+companies:1",
        "settings": {"moesif_api_url": "http://127.0.0.1:1234", "segment_host":
                     "http://127.0.0.1:5678", "page_size": 1000},
        "entities": {"users": users, "companies": companies},
        "messages": {"identify": {"sent": 95, "delivered": 93, "failed": 2},
                     "group": {"sent": 80, "delivered": 80, "failed": 0}},
        "fields": fields, "issues": issues, "issue_counts": counts,
        "phases": {"fetch": 1.2, "map": 0.3, "diff": 0.1, "send": 2.0, "store": 0.2},
        "duration_s": 3.9, "throughput": {"records_per_s": 28.2, "messages_per_s": 44.9},
        "samples": [{
            "entity": "users", "id": "usr_1",
            "source": {"user_id": "usr_1", "name": "Zoë <script>alert(1)</script>",
                       "email": "z***@example.com", "metadata": {"plan": "pro"}},
            "messages": [{"type": "identify", "userId": "usr_1",
                          "traits": {"name": "Zoë <script>alert(1)</script>"}},
                         {"type": "group", "userId": "usr_1", "groupId": "cmp_1"}],
        }],
    }
    if mode == "dry-run":
        report["dry_run_note"] = "dry run: nothing was sent and no state moved"
    return report


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.field_rows: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if "field-row" in (attributes.get("class") or ""):
            self.field_rows.append(attributes.get("data-field") or "")
        for name in ("src", "href", "action", "data"):
            if attributes.get(name):
                self.urls.append(attributes[name] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> _Collector:
    collector = _Collector()
    collector.feed(document)
    collector.close()
    return collector


def test_text_shows_counts_coverage_issues_phases_throughput():
    text = render_text(make_report(email_present=49))
    assert "20261122T053000Z-1a2b3c" in text and "PARTIAL" in text
    line = next(ln for ln in text.splitlines() if "identify.traits.email" in ln)
    assert "49 (50.0%)" in line and "49 (50.0%)" in line.split("49 (50.0%)", 1)[1]
    created = next(ln for ln in text.splitlines() if "identify.traits.createdAt" in ln)
    assert "98 (100.0%)" in created  # converted
    codes = next(ln for ln in text.splitlines() if "DELIVERY_FAILED" in ln)
    assert "250" in codes and "usr_0, usr_1, usr_2" in codes and "usr_3" not in codes
    assert "send" in text and "52.6%" in text  # 2.0 of 3.8 s
    assert "records/s 28.2" in text


def test_text_escapes_markup_and_survives_an_empty_report():
    report = make_report()
    report["issues"][0]["id"] = "[bold]usr[/bold]"
    assert "[bold]usr[/bold]" in render_text(report)
    text = render_text({})
    assert "Issues: none" in text and "no fields recorded" in text


def test_text_shows_dry_run_note_and_error():
    report = make_report(mode="dry-run", status="failed")
    report["error"] = "Moesif answered 401"
    text = render_text(report)
    assert "dry run: nothing was sent" in text and "error: Moesif answered 401" in text


def test_json_is_the_report_itself():
    report = make_report()
    shown = json.loads(render_json(report))
    # Every key of the stored report, unchanged; the model adds its version (1: no field).
    assert {k: shown[k] for k in report} == report
    assert shown["report_version"] == 1


def test_html_is_self_contained_and_has_every_field_row():
    report = make_report()
    document = render_html(report)
    parsed = parse(document)
    assert sorted(parsed.field_rows) == sorted(report["fields"])
    assert "script" not in parsed.tags and "img" not in parsed.tags and "link" not in parsed.tags
    assert all(u.startswith("#") for u in parsed.urls), parsed.urls
    assert "http://" not in document.replace("http://127.0.0.1", "")
    assert "https://" not in document
    # Source and mapped payloads side by side, escaped.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "Moesif source record" in document and "Segment messages" in document
    assert "<svg" in document


def test_html_lists_first_200_issues_and_every_code():
    document = render_html(make_report(extra_issue="OVERSIZE"))
    text = "".join(parse(document).text)
    assert "showing the first 200 of 253 issues" in text
    assert "usr_197" in text and "usr_198" not in text  # 2 MISSING_ID rows come first
    for code in ("MISSING_ID", "DELIVERY_FAILED", "OVERSIZE"):
        assert code in text


def test_html_masks_key_like_values():
    report = make_report()
    report["settings"]["segment_write_key"] = "wk_live_abcdef123456"
    report["samples"][0]["source"]["metadata"]["api_key"] = "moesif_secret_987654"
    document = render_html(report)
    assert "wk_live_abcdef123456" not in document
    assert "moesif_secret_987654" not in document
    assert "segment_write_key" in document  # the name may show, never the value


def test_html_survives_missing_and_odd_parts():
    odd = {"run_id": "r1", "status": "weird", "fields": {"identify.x": "oops",
                                                         "identify.y": {"present": "x",
                                                                        "missing": 2}},
           "entities": {"users": None}, "issues": ["not a dict"], "samples": [None],
           "phases": {"fetch": "slow"}}
    for report in ({}, odd):
        parsed = parse(render_html(report))
        assert "main" in parsed.tags
    # A part of the wrong shape is left out; the rest of its entry still renders.
    assert parse(render_html(odd)).field_rows == ["identify.y"]


def test_coverage_and_issue_summary_helpers():
    rows = {r["field"]: r for r in field_coverage(make_report(email_present=49))}
    assert rows["identify.traits.email"]["missing_pct"] == 50.0
    assert rows["identify.traits.metadata"]["trimmed"] == 1
    summary = issue_summary({"issues": [{"code": "BAD_VALUE", "id": "a"}],
                             "issue_counts": {"MISSING_ID": 3}})
    assert [(s["code"], s["count"]) for s in summary] == [("MISSING_ID", 3), ("BAD_VALUE", 1)]


def test_diff_reports_counts_coverage_issue_codes_and_status():
    a = make_report("run-a", email_present=49, status="partial")
    b = make_report("run-b", email_present=98, status="success", extra_issue="OVERSIZE")
    b["entities"]["users"]["delivered"] = 95
    b["issues"] = [i for i in b["issues"] if i["code"] != "MISSING_ID"]
    b["issue_counts"].pop("MISSING_ID")
    b["fields"]["identify.traits.plan"] = {"present": 1, "missing": 0}
    d = diff_reports(a, b)
    assert d["status"] == {"a": "partial", "b": "success", "changed": True}
    assert d["entities"]["users"]["delivered"] == {"a": 93, "b": 95, "delta": 2}
    assert d["fields"]["identify.traits.email"]["present_pct"]["delta"] == 50.0
    assert d["fields_added"] == ["identify.traits.plan"]
    assert d["issues"]["new"] == {"OVERSIZE": 1}
    # An incremental run that did not fetch those records again says nothing about them.
    assert d["issues"]["resolved"] == {}
    assert d["issues"]["not_seen"] == {"MISSING_ID": 2}
    json.dumps(d)  # serialisable for --format json
    text = render_diff_text(d)
    assert "partial → success" in text
    assert "identify.traits.email" in text and "+50.0 pts" in text
    assert "new issue codes: OVERSIZE (1)" in text
    assert "issue codes absent, records not fetched again: MISSING_ID (2)" in text
    # A finished full run saw every record: what is absent was resolved.
    b["mode"] = "full"
    full = diff_reports(a, b)
    assert full["issues"]["resolved"] == {"MISSING_ID": 2} and not full["issues"]["not_seen"]
    assert "resolved issue codes: MISSING_ID (2)" in render_diff_text(full)
    assert "identify.traits.name" not in text  # did not move


def test_diff_of_identical_reports_says_nothing_moved():
    report = make_report()
    text = render_diff_text(diff_reports(report, report))
    assert "Record counts that moved: none" in text
    assert "Field coverage that moved: none" in text
    assert "Issue codes: no change" in text
    assert "(unchanged)" in text


def test_diff_tolerates_empty_reports():
    text = render_diff_text(diff_reports({}, make_report()))
    assert "fetched" in text


def test_diff_resolves_an_issue_only_for_a_record_seen_again():
    a = make_report("run-a")
    b = make_report("run-b")
    b["issues"] = [{"entity": "users", "id": "usr_bad0", "code": "BAD_TIMESTAMP",
                    "detail": "x", "attempts": 1}]
    b["issue_counts"] = {"BAD_TIMESTAMP": 1}
    d = diff_reports(a, b)
    assert d["issues"]["resolved"] == {"MISSING_ID": 1}  # usr_bad0 seen, usr_bad1 not
    assert d["issues"]["not_seen"] == {"DELIVERY_FAILED": 250}


def test_diff_calls_a_field_gone_only_when_such_records_were_mapped():
    a = make_report("run-a")
    b = make_report("run-b")
    del b["fields"]["identify.traits.email"]
    for name in [f for f in b["fields"] if f.startswith("group.")]:
        del b["fields"][name]
    d = diff_reports(a, b)
    assert d["fields_removed"] == ["identify.traits.email"]
    assert set(d["fields_not_mapped"]) == set(GROUP_FIELDS)
    text = render_diff_text(d, width=80)
    assert "fields gone in the second run (its records lacked them): " \
           "identify.traits.email" in text


def test_summary_fits_80_columns_failures_first_and_says_where_the_report_is():
    from connector.reports.render import render_summary

    report = make_report(extra_issue="OVERSIZE")
    text = render_summary(report, width=80, html_path="/very/long/" + "x" * 90 + ".html")
    lines = text.splitlines()
    assert len(lines) <= 25
    assert all(len(ln) <= 80 for ln in lines if not ln.startswith("HTML report:"))
    assert "PARTIAL" in lines[0]
    users = next(ln for ln in lines if ln.startswith("users"))
    assert users.split()[1:4] == ["100", "93", "2"]  # fetched, delivered, failed
    codes = [ln.split()[0] for ln in lines if ln.startswith("  ") and ln.split()[0].isupper()]
    assert codes[:3] == ["DELIVERY_FAILED", "OVERSIZE", "MISSING_ID"]
    assert "Field coverage" not in text
    assert f"moesif-segment report show {report['run_id']}" in text
    assert "HTML report: /very/long/" + "x" * 90 + ".html" in text  # never wrapped


def test_html_puts_issues_first_links_ids_to_samples_and_explains_the_colours():
    report = make_report(extra_issue="OVERSIZE")
    report["samples"].append({"entity": "users", "id": "usr_bad0",
                              "source": {"name": "x"}, "messages": []})
    report["samples"].append({"entity": "users", "id": "usr_clean",
                              "source": {"name": "y"}, "messages": [{"type": "identify"}]})
    page = render_html(report)
    strip = page.index('class="strip"')
    assert strip < page.index('id="outcomes"') < page.index('id="issues"') \
        < page.index('id="coverage"')
    assert "253 issues" in page[strip:page.index('id="outcomes"')]
    # the failure code is marked, the issue id links to its sample, which names the code
    assert '<a class="chip bad" href="#issues"><code>DELIVERY_FAILED</code>' in page
    anchor = page.index('<div class="sample" id="sample-1">')
    assert '<a href="#sample-1" title="see its sample"><code>usr_bad0</code></a>' in page
    assert "MISSING_ID" in page[anchor:anchor + 300]
    assert "nothing was sent for this record" in page
    assert page.index('id="sample-1"') < page.index('id="sample-2"')  # issues first
    clean = page.index('id="sample-2"')
    assert '<span class="chip clean">clean</span>' in page[clean:clean + 300]
    assert "What the colours and words mean" in page and "<b>converted</b>" in page
