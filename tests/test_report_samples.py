"""A run's samples show records with issues beside clean ones (the sandbox's data set has
a MISSING_ID, an OVERSIZE, a BAD_TIMESTAMP ... record among its first users)."""

from __future__ import annotations

from connector.reports.render import render_html
from connector.sync.job import run_sync
from connector.sync.samples import ISSUE_SAMPLE_COUNT, SAMPLE_COUNT
from tests.helpers import sync_sandbox


def test_samples_include_records_with_issues_one_per_code(settings_factory):
    with sync_sandbox(150, 15) as sb:
        settings = settings_factory(moesif_api_url=sb.moesif_url, segment_host=sb.segment_url)
        report = run_sync(settings, "incremental").report
    by_record = {(i.entity, i.id): str(i.code) for i in report.issues}
    sampled = [by_record.get((s.entity, s.id)) for s in report.samples]
    codes = [c for c in sampled if c]
    assert {"MISSING_ID", "OVERSIZE"} <= set(codes), sampled
    assert len(codes) == len(set(codes)) <= ISSUE_SAMPLE_COUNT  # one per code
    assert sampled.count(None) == SAMPLE_COUNT  # and the clean ones
    oversize = next(s for s in report.samples if by_record.get((s.entity, s.id)) == "OVERSIZE")
    assert oversize.messages == []  # nothing was sent for it
    assert 'title="see its sample"' in render_html(report)
