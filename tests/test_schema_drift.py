"""Schema drift (issue 9): added fields, type changes and vanished mapped fields, in the
report, its renderings and `report diff`; the `stop` policy sends nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.reports.render import diff_reports, render_diff_text, render_html, render_text
from connector.sandbox.alert_receiver import AlertReceiver
from connector.schema_drift import MAX_DEPTH, MAX_PATHS, Inventory
from connector.sync.job import run_sync
from tests.helpers import sync_sandbox

USERS = 60


def _mutate(sb, *, drop: str | None = None, seats_text: bool = False,
            new_flag_every: int = 0) -> None:
    """Change every user in the sandbox (so an incremental run fetches them all)."""
    ds = sb.dataset
    for i in range(USERS):
        key = ds.user_key(i)
        doc = ds.get_user(key)
        if doc is None:
            continue
        patch: dict = {}
        metadata = dict(doc.get("metadata") or {})
        if seats_text and isinstance(metadata.get("seats"), int):
            metadata["seats"] = str(metadata["seats"])
        if new_flag_every and i % new_flag_every == 0:
            metadata["beta_flag"] = True
        patch["metadata"] = metadata
        if drop:
            patch[drop] = None
        ds.users.update(key, patch, None)


def _settings(sb, factory, **kw):
    return factory(moesif_api_url=sb.moesif_url, segment_host=sb.segment_url,
                   schema_drift_min_records=20, **kw)


def test_drift_is_reported_and_diffed(settings_factory):
    with sync_sandbox(USERS, 5) as sb:
        settings = _settings(sb, settings_factory)
        first = run_sync(settings).report
        assert first.schema_section["baseline"] == ["companies", "users"]
        assert not first.schema_section["added"] and not first.schema_section["vanished"]
        _mutate(sb, drop="user_agent_string", seats_text=True, new_flag_every=3)
        second = run_sync(settings).report
    schema = second.schema_section
    added = {a["path"]: a for a in schema["added"]}
    assert "metadata.beta_flag" in added
    assert 0 < added["metadata.beta_flag"]["records"] < added["metadata.beta_flag"]["of_records"]
    changed = {c["path"]: c for c in schema["type_changed"]}
    assert changed["metadata.seats"]["types"] == ["string"]
    assert changed["metadata.seats"]["was"] == ["number"]
    gone = {v["path"]: v for v in schema["vanished"]}
    assert gone["user_agent_string"]["breaking"] and schema["breaking"]
    assert second.status == "success"  # policy "report": reported, not stopped
    assert second.to_dict()["schema"]["vanished"]
    text = render_text(second, width=200)
    assert "Schema drift" in text and "user_agent_string" in text and "metadata.seats" in text
    html = render_html(second)
    assert 'id="schema"' in html and "metadata.beta_flag" in html
    d = diff_reports(first, second)
    assert "users.user_agent_string" in d["schema"]["vanished"]["b"]
    assert "users.metadata.seats" in render_diff_text(d, width=200)


def test_stop_policy_sends_nothing_and_raises_the_alert(settings_factory):
    receiver = AlertReceiver()
    with sync_sandbox(USERS, 5) as sb, receiver.server() as server:
        settings = _settings(sb, settings_factory, schema_drift_policy="stop",
                             alert_webhook_url=server.url,
                             alert_webhook_secret=SecretStr("s3cret-abc"))
        assert run_sync(settings).report.status == "success"
        sent_before = len(sb.segment.messages)
        _mutate(sb, drop="user_agent_string")
        outcome = run_sync(settings)
        assert outcome.exit_code == 1
        assert outcome.report.status == "failed"
        assert "user_agent_string" in outcome.report.error
        assert len(sb.segment.messages) == sent_before
        assert "schema_breaking" in {a["rule"] for a in outcome.report.alerts["raised"]}
        assert receiver.wait_for(1)
    assert "schema_breaking" in {e["rule"] for e in receiver.events("alert.raised")}


_keys = st.text(alphabet="abc", min_size=1, max_size=3)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(_keys, kids, max_size=6), max_leaves=15)


@hsettings(max_examples=25, deadline=None)
@given(docs=st.lists(st.dictionaries(_keys, _json, max_size=8), max_size=8))
def test_inventory_is_bounded_and_counts_records(docs):
    inv = Inventory()
    for doc in docs:
        inv.add("users", doc)
    assert inv.records.get("users", 0) == len(docs)
    assert len(inv.counts) <= MAX_PATHS
    for (_, path, _), n in inv.counts.items():
        assert 1 <= n <= len(docs) and path.count(".") < MAX_DEPTH


def test_inventory_of_a_huge_record_stays_bounded():
    inv = Inventory()
    inv.add("users", {"metadata": {f"k{i}": i for i in range(10_000)}})
    assert len(inv.counts) <= 201 and "users" in inv.truncated
