"""The typed run report: old reports still load and render, new ones carry a version,
and no stored JSON, however odd, makes a report unreadable."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import IssueCode
from connector.reports.model import (
    REPORT_VERSION,
    EntityCounts,
    Mode,
    Outcome,
    ReportBuilder,
    RunReport,
    Status,
)
from connector.reports.render import (
    diff_reports,
    render_diff_text,
    render_html,
    render_json,
    render_text,
)
from connector.reports.store import ReportStore
from connector.state.store import connect
from tests.conftest import make_settings

V1 = Path(__file__).parent / "data" / "report_v1.json"


def v1() -> dict:
    return json.loads(V1.read_text())


def test_a_version_1_report_loads_into_the_model():
    report = RunReport.from_dict(v1())
    assert report.report_version == 1
    assert report.status is Status.SUCCESS and report.mode is Mode.INCREMENTAL
    assert isinstance(report.entities["users"], EntityCounts)
    assert report.entities["users"].fetched == 40
    assert report.entities["users"].outcome(Outcome.DELIVERED) == 37
    assert {type(i.code) for i in report.issues} == {IssueCode}
    assert report.fields["identify.userId"].total > 0


def test_a_version_1_report_renders_in_every_format(tmp_path):
    old = v1()
    text = render_text(old)
    assert old["run_id"] in text and "SUCCESS" in text and "MISSING_ID" in text
    page = render_html(old)
    assert "identify.traits.email" in page and old["run_id"] in page
    shown = json.loads(render_json(old))
    assert {k: shown[k] for k in old} == old  # every old key, every old value
    diff = diff_reports(old, old)
    assert diff["status"]["changed"] is False
    assert "no change" in render_diff_text(diff)


def test_a_version_1_report_stored_before_the_model_is_shown_by_the_cli(tmp_path):
    from typer.testing import CliRunner

    from connector.cli import app

    old = v1()
    conn = connect(tmp_path / "home" / "state.sqlite3")
    ReportStore(conn).save(old)  # stored as the old code stored it: the same JSON
    conn.close()
    env = {"CONNECTOR_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(app, ["report", "show", "latest", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert {k: shown[k] for k in old} == old
    listed = CliRunner().invoke(app, ["report", "list"], env=env, terminal_width=200)
    assert old["run_id"] in listed.stdout and "success" in listed.stdout


def test_the_builder_finishes_a_versioned_model_that_round_trips(tmp_path):
    builder = ReportBuilder("r-1", "dry-run", "m1", make_settings(tmp_path))
    builder.entities["users"]["fetched"] += 2
    builder.messages["identify"]["sent"] += 1
    builder.issue("users", "u1", "OVERSIZE", "too big", 1)
    builder.issue("users", "u2", "A_CODE_FROM_THE_FUTURE", "kept as text")
    report = builder.finish(Status.PARTIAL, None)
    assert report.report_version == REPORT_VERSION == 2
    assert report.dry_run and report.dry_run_note
    assert report.issues[0].code is IssueCode.OVERSIZE
    assert report.issues[1].code == "A_CODE_FROM_THE_FUTURE"
    data = report.to_dict()
    assert "attempts" not in data["issues"][1]  # absent parts stay absent, as before
    assert "page_size" in data["settings"] and "segment_write_key" not in data["settings"]
    assert RunReport.from_dict(json.loads(json.dumps(data))) == report


def test_statuses_are_the_documented_five():
    assert [s.value for s in Status] == ["running", "success", "partial", "failed",
                                         "interrupted"]
    assert [m.value for m in Mode] == ["incremental", "full", "dry-run"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

PARTS = ["run_id", "status", "mode", "entities", "messages", "fields", "issues",
         "issue_counts", "phases", "throughput", "samples", "settings", "error",
         "duration_s", "report_version", "started_at"]


@settings(max_examples=40, deadline=None)
@given(base=st.sampled_from(["v1", "empty"]),
       replaced=st.dictionaries(st.sampled_from(PARTS), json_values, max_size=4),
       nested=st.dictionaries(st.sampled_from(["users", "identify.userId", "0"]), json_values,
                              max_size=2))
def test_any_stored_json_loads_and_renders(base, replaced, nested):
    data = v1() if base == "v1" else {}
    data.update(replaced)
    for part in ("entities", "fields", "messages"):
        if isinstance(data.get(part), dict):
            data[part] = {**data[part], **nested}
    report = RunReport.from_dict(data)
    assert isinstance(report, RunReport)
    # Whatever was unusable was left out; everything kept is of its declared type.
    assert all(isinstance(c, EntityCounts) for c in report.entities.values())
    render_text(report)
    render_html(report)
    assert json.loads(render_json(report))["run_id"] == report.run_id


def test_no_key_reaches_a_report_even_when_an_issue_or_a_url_quotes_it(tmp_path):
    settings = make_settings(tmp_path)
    key = settings.segment_write_key.get_secret_value()
    mgmt = settings.moesif_management_api_key.get_secret_value()
    settings = make_settings(tmp_path, segment_host=f"http://127.0.0.1:9/{key}")
    builder = ReportBuilder("r-1", "full", "m1", settings)
    builder.issue("users", "u1", "REJECTED", f"Segment answered 400: bad key {key} / {mgmt}")
    text = json.dumps(builder.finish(Status.PARTIAL, None).to_dict())
    assert key not in text and mgmt not in text
    assert "Segment answered 400: bad key" in text
