"""An event whose Moesif form is over the Collector's 1 MB per-event limit is refused at
the encoder (a dead letter with a reason, or a 400 naming it over HTTP ingest), not
spooled, sent, refused by Moesif and split out of its batch.

Before: a log line under FORWARD_MAX_LINE_BYTES (1 MiB) can map to a Moesif event over
1,000,000 bytes (the resource path appears in request.uri and in the metadata): it was
spooled, sent, refused (400), isolated by halving its batch (a dozen posts of up to 5 MB
for one event), dead-lettered as REJECTED_BY_COLLECTOR, and a `--once` run exited 1. A
Collector that drops an oversize event without refusing the batch would lose it unseen.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connector.errors import DeadLetterCode
from connector.forward.encoder import EventEncoder
from connector.forward.errors import MalformedEvent
from connector.forward.masking import MaskConfig
from connector.forward.pipeline import run_forward
from connector.moesif.limits import MAX_EVENT_BYTES
from connector.sandbox.moesif_collector import MoesifCollectorSandbox
from connector.settings import Settings

APP_ID = "moesif-app-id-oversize-2b1c0d"
PREFIX = (b"15:56:07,928 [-] [PassThroughMessageProcessor-18]  INFO ELKCounterMetric "
          b"apimMetrics: apim:response, properties :")


_NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # the sandbox refuses old events


def _event(i: int, template_bytes: int = 5) -> dict[str, object]:
    return {"correlationId": f"oversize-{i}", "requestTimestamp": _NOW,
            "apiName": "PizzaShackAPI", "apiContext": "/pizza", "apiMethod": "GET",
            "apiResourceTemplate": "/" + "m" * template_bytes, "proxyResponseCode": 200}


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[MoesifCollectorSandbox, str]]:
    app = MoesifCollectorSandbox({APP_ID})
    with app.server() as server:
        yield app, server.url


def test_an_oversize_event_in_the_log_is_dead_lettered_and_the_rest_delivered(
        tmp_path: Path, collector: tuple[MoesifCollectorSandbox, str]) -> None:
    app, url = collector
    before = app.unique_count
    big = orjson.dumps(_event(1, 600_000))
    assert len(PREFIX + big) < 1_048_576  # under FORWARD_MAX_LINE_BYTES
    log = tmp_path / "apim_metrics.log"
    log.write_bytes(b"\n".join(PREFIX + orjson.dumps(e) for e in
                               (_event(0), _event(1, 600_000), _event(2))) + b"\n")
    settings = Settings(_env_file=None, moesif_application_id=APP_ID,
                        moesif_collector_url=url, connector_home=tmp_path / "home")
    out = io.StringIO()
    assert run_forward(settings, from_log=log, once=True, parse_workers=0, out=out) == 0
    assert app.unique_count == before + 2
    assert "dead_lettered=1" in out.getvalue()
    from connector.state.store import connect
    conn = connect(settings.state_path)
    try:
        rows = conn.execute("SELECT reason_code, detail, length(raw) FROM dead_letters").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1 and rows[0][0] == DeadLetterCode.EVENT_TOO_LARGE.value
    assert "1000000" in rows[0][1] and rows[0][2] <= 8192 + 200


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 1_000_000))
@example(size=400_000)  # fits
@example(size=990_000)  # does not
def test_an_event_is_refused_exactly_when_its_moesif_form_is_over_the_limit(size: int) -> None:
    encoder = EventEncoder(False, MaskConfig())
    event = _event(3, size)
    # What the Moesif form weighs, from the mapping itself (no encoder limit involved).
    weight = len(orjson.dumps(encoder.mapper.process(copy.deepcopy(event), None)))
    if weight > MAX_EVENT_BYTES:
        with pytest.raises(MalformedEvent) as refused:
            encoder(event, None)
        assert refused.value.reason_code == DeadLetterCode.EVENT_TOO_LARGE.value
        assert "Collector" in refused.value.detail
    else:
        _, body = encoder(event, None)
        assert len(body) == weight <= MAX_EVENT_BYTES
