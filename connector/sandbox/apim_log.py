"""Realistic WSO2 API Manager `apim_metrics.log` content, deterministic for a seed.

Each record follows the ELK appender's log4j pattern `%d{HH:mm:ss,SSS} [%X{ip}-%X{host}]
[%t] %5p %c{1} %m%n` with the message `apimMetrics: apim:response, properties :{json}`
or `apimMetrics: apim:faulty, properties :{json}`. Mixed in, as on a real gateway:
other log lines (one of them a multi-line Java stack trace) and malformed metric lines
(truncated JSON, `apim:unknown`, JSON that is not an object).

Events carry every field of the seed's two tables: the core fields at the top level, the
seed's response extras (`commonName`, `subType`, headers, AI fields...) at the top level
too, and WSO2's nested shape in `properties` (`subtype`, `aiMetadata`, `aiTokenUsage`).

Record `i` is drawn from its own RNG seeded by `(seed, i)`, so `event(i)` is random
access and `lines(n, start=k)` continues a log where an earlier call stopped. Timestamps
start at `start` (default: yesterday 00:00 UTC, so a day's output is stable and always
younger than Moesif's 30-day limit) and advance `1/events_per_second` per record.

CLI: `python -m connector.sandbox.apim_log --lines N --out path [--seed S]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

RESPONSE = "response"
FAULTY = "faulty"
NOISE = "noise"
MALFORMED = "malformed"

# Every field of the seed's two tables (000_4921f0980b26c711.txt).
RESPONSE_FIELDS = (
    "apiCreator", "apiCreatorTenantDomain", "apiId", "apiMethod", "apiName",
    "apiResourceTemplate", "apiType", "apiVersion", "applicationId", "applicationName",
    "applicationOwner", "backendLatency", "correlationId", "destination", "eventType",
    "gatewayType", "keyType", "userName", "proxyResponseCode", "regionId",
    "requestMediationLatency", "requestTimestamp", "responseCacheHit", "responseLatency",
    "responseMediationLatency", "targetResponseCode", "userAgent", "userIp", "commonName",
    "responseContentType", "subType", "isEgress", "apiContext", "responseSize",
    "requestHeaders", "responseHeaders", "vendorName", "vendorVersion", "model",
    "promptTokens", "completionTokens", "totalTokens", "hour",
)
FAULTY_FIELDS = (
    "apiCreator", "apiCreatorTenantDomain", "apiId", "apiMethod", "apiName",
    "apiResourceTemplate", "apiType", "apiVersion", "applicationId", "applicationName",
    "applicationOwner", "backendLatency", "correlationId", "destination", "eventType",
    "gatewayType", "keyType", "platform", "properties", "apiContext", "userName",
    "proxyResponseCode", "regionId", "requestMediationLatency", "requestTimestamp",
    "responseCacheHit", "responseLatency", "responseMediationLatency", "targetResponseCode",
    "userAgent", "userIp", "errorCode", "errorMessage", "errorType",
)

_NS = uuid.UUID("6f1c2a4e-9d0b-4c53-8a57-2f5d1e0c7b11")


def _uid(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


@dataclass(frozen=True)
class _Api:
    name: str
    context: str
    version: str
    creator: str
    tenant: str
    api_type: str
    destination: str
    resources: tuple[tuple[str, str], ...]
    content_type: str = "application/json"
    vendor: tuple[str, str, tuple[str, ...]] | None = None  # name, version, models

    @property
    def api_id(self) -> str:
        return _API_IDS[self.name]


_APIS = (
    _Api("PizzaShackAPI", "/pizzashack/1.0.0", "1.0.0", "admin", "carbon.super", "HTTP",
         "https://localhost:9443/am/sample/pizzashack/v1/api/",
         (("GET", "/menu"), ("POST", "/order"), ("GET", "/order/{orderId}"),
          ("PUT", "/order/{orderId}"), ("DELETE", "/order/{orderId}"))),
    _Api("OrdersAPI", "/t/acme.com/orders/2.1", "2.1", "carol@acme.com", "acme.com", "HTTP",
         "https://orders.internal.acme.com:8443/api/v2",
         (("GET", "/orders"), ("POST", "/orders"), ("GET", "/orders/{id}"),
          ("PATCH", "/orders/{id}"), ("GET", "/orders/{id}/items"))),
    _Api("PaymentsAPI", "/payments/v1", "v1", "publisher@carbon.super", "carbon.super", "HTTP",
         "https://payments.example.com/core",
         (("POST", "/charges"), ("GET", "/charges/{chargeId}"), ("POST", "/refunds"))),
    _Api("CustomerGraph", "/customers/1.0", "1.0", "admin", "carbon.super", "GRAPHQL",
         "https://graph.example.com/graphql",
         (("POST", "customer"), ("POST", "customers"), ("POST", "updateCustomer"))),
    _Api("WeatherService", "/weather/1.0.0", "1.0.0", "admin", "carbon.super", "SOAP",
         "http://ws.weather.example.org/WeatherService",
         (("POST", "/*"),), content_type="text/xml; charset=UTF-8"),
)
_AI_APIS = (
    _Api("OpenAIChatAPI", "/openai/1.0.0", "1.0.0", "admin", "carbon.super", "HTTP",
         "https://api.openai.com/v1",
         (("POST", "/chat/completions"), ("POST", "/embeddings")),
         vendor=("OpenAI", "1.0.0", ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo"))),
    _Api("MistralAPI", "/mistral/0.0.2", "0.0.2", "admin", "carbon.super", "HTTP",
         "https://api.mistral.ai/v1", (("POST", "/chat/completions"),),
         vendor=("MistralAI", "0.0.2", ("mistral-small-latest", "mistral-large-latest"))),
    _Api("AzureOpenAIAPI", "/azure-openai/2024-02-01", "2024-02-01", "carol@acme.com",
         "acme.com", "HTTP", "https://acme-ai.openai.azure.com/openai/deployments/gpt4",
         (("POST", "/chat/completions"),),
         vendor=("AzureOpenAI", "2024-02-01", ("gpt-4", "gpt-35-turbo"))),
)

_API_IDS = {api.name: _uid("api:" + api.name) for api in _APIS + _AI_APIS}

_NAMED_USERS = ("admin@carbon.super", "john.doe@example.com@carbon.super", "alice@tenant.com",
                "bob", "carol@acme.com", "svc-batch@carbon.super")
_NAMED_IPS = ("127.0.0.1", "192.168.1.98", "10.0.0.15", "2001:db8::7", "::1",
              "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a",
              "2001:db8:0:0:1::1")
# ELK mode reports the browser family as `userAgent` and the OS family as `platform`.
_AGENT_FAMILIES = (("Chrome", "Windows"), ("Firefox", "Linux"), ("Safari", "Mac OS X"),
                   ("Mobile Safari", "iOS"), ("Chrome Mobile", "Android"), ("Edge", "Windows"),
                   ("Other", "Other"))
_RAW_AGENTS = (
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "Windows"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "iOS"),
    ("curl/8.5.0", "Other"), ("PostmanRuntime/7.37.3", "Other"), ("okhttp/4.12.0", "Android"),
    ("python-requests/2.31.0", "Other"), ("Apache-HttpClient/4.5.14 (Java/17.0.9)", "Other"),
)
_MDC = ("[-]",) * 6 + ("[]",) * 2 + ("[10.1.2.3-gw-1]", "[10.1.2.4-gw-2.example.com]")
_REGIONS = ("default",) * 6 + ("us-east-1", "eu-west-1")
_RESPONSE_CODES = ((200,) * 70 + (201,) * 8 + (204,) * 4 + (304,) * 2 + (400,) * 5
                   + (404,) * 5 + (500,) * 4 + (502,) * 2)

_AUTH_FAULTS = (
    (900901, "Invalid Credentials", 401), (900902, "Missing Credentials", 401),
    (900900, "Unclassified Authentication Failure", 401), (900908, "Resource forbidden ", 403),
    (900910, "The access token does not allow you to access the requested resource", 403),
    (900906, "No matching resource found for given API Request", 404),
)
_THROTTLE_FAULTS = (
    (900800, "Message throttled out", 429), (900802, "Message throttled out", 429),
    (900803, "Message throttled out", 429), (900806, "Message throttled out", 429),
)
_TARGET_FAULTS = (
    (101503, "Error connecting to the back end", 503), (101504, "Connection timed out", 504),
    (101505, "Connection closed", 502), (101500, "Error in Sender", 500),
    (101508, "Request timeout", 504),
    (303001, "Currently , Address endpoint : [ Name : PizzaShackAPI--v1.0.0_APIproductionEndpoint"
             " ] [ State : SUSPENDED ]", 503),
)
_FAULT_TYPES = ((("AUTH", _AUTH_FAULTS),) * 5 + (("THROTTLED", _THROTTLE_FAULTS),) * 3
                + (("TARGET_CONNECTIVITY", _TARGET_FAULTS),) * 2)
# Header names in the letter cases gateways and clients really send.
_AUTH_NAMES = ("Authorization", "authorization", "AUTHORIZATION")
_COOKIE_NAMES = ("Cookie", "cookie", "COOKIE")
_APIKEY_NAMES = ("X-API-Key", "x-api-key", "X-Api-Key", "X-API-KEY")

_NOISE_TEMPLATES = (
    " INFO LogMediator To: {ctx}/menu, MessageID: urn:uuid:{uid}, Direction: request",
    " WARN TimeoutHandler Expiring message ID : urn:uuid:{uid}; dropping message after "
    "GLOBAL_TIMEOUT of : 120 seconds for Endpoint [PizzaShackAPI--v1.0.0_APIproductionEndpoint]",
    " INFO ELKCounterMetric Analytics event queue size: {n}",
    " INFO AnalyticsServiceReferenceHolder apimMetrics reporter initialised with ELK counter",
    "DEBUG SynapseDebugInfoHolder Message flow trace id {uid}",
    " WARN APIKeyValidator Token cache miss for key ending {n}",
)
_STACK_TRACE = (
    "ERROR ELKMetricReporter Error while publishing analytics event {uid}\n"
    "java.lang.IllegalStateException: Analytics publisher queue is full\n"
    "\tat org.wso2.am.analytics.publisher.reporter.elk.ELKCounterMetric.incrementCount"
    "(ELKCounterMetric.java:57)\n"
    "\tat org.wso2.carbon.apimgt.gateway.handlers.analytics.AnalyticsMetricsHandler"
    ".handleResponse(AnalyticsMetricsHandler.java:112)\n"
    "\tat org.apache.synapse.rest.API.process(API.java:376)\n"
    "\tat java.base/java.lang.Thread.run(Thread.java:833)\n"
    "Caused by: java.util.concurrent.RejectedExecutionException: queue capacity 1000 reached\n"
    "\t... 12 more"
)


@dataclass
class LogStats:
    """What a run of `lines` produced; `events` is what a parser should accept."""

    records: int = 0
    physical_lines: int = 0
    events: int = 0
    responses: int = 0
    faults: int = 0
    ai: int = 0
    with_headers: int = 0
    noise: int = 0
    malformed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class LogGenerator:
    def __init__(
        self,
        seed: int = 7,
        fault_ratio: float = 0.15,
        ai_ratio: float = 0.1,
        noise_ratio: float = 0.05,
        malformed_ratio: float = 0.01,
        headers_ratio: float = 0.3,
        *,
        start: datetime | None = None,
        events_per_second: float = 200.0,
        ipv6_ratio: float = 0.2,
    ) -> None:
        if noise_ratio + malformed_ratio > 1:
            raise ValueError("noise_ratio + malformed_ratio must not exceed 1")
        self.seed = seed
        self.fault_ratio = fault_ratio
        self.ai_ratio = ai_ratio
        self.noise_ratio = noise_ratio
        self.malformed_ratio = malformed_ratio
        self.headers_ratio = headers_ratio
        self.ipv6_ratio = ipv6_ratio
        if start is None:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            start = today - timedelta(days=1)
        elif start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.start = start
        self._start_ms = int(start.timestamp() * 1000)
        self._step_ms = 1000.0 / events_per_second
        self._seed_base = (seed & 0xFFFFFFFF) << 40
        self._rng = random.Random()
        self._second_cache: tuple[int, str, str] = (-1, "", "")
        self.stats = LogStats()
        self._build_pools(random.Random(seed))

    # --- pools drawn once per seed ---

    def _build_pools(self, rng: random.Random) -> None:
        users = list(_NAMED_USERS)
        for k in range(400):
            shape = k % 4
            users.append(
                f"user{k}@carbon.super" if shape == 0
                else f"dev{k}@acme.com" if shape == 1
                else f"first.last{k}@example.com@carbon.super" if shape == 2
                else f"svc{k}"
            )
        self._users = users
        self._apps = [("DefaultApplication", _uid("app:default"), "admin")]
        for k in range(40):
            owner = users[rng.randrange(len(users))]
            self._apps.append((f"App-{k:02d}", _uid(f"app:{_seed_tag(rng)}:{k}"), owner))
        self._ipv4 = [f"{rng.choice((10, 172, 192, 203, 81, 52))}.{rng.randrange(256)}."
                      f"{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(500)]
        self._ipv6 = [_random_ipv6(rng) for _ in range(200)]

    # --- public API ---

    def lines(self, n: int, start: int = 0) -> Iterator[str]:
        """`n` log records from index `start`, each ending in a newline.

        A stack-trace record spans several physical lines. `self.stats` counts what was
        produced (reset at each call).
        """
        self.stats = stats = LogStats()
        for index in range(start, start + n):
            kind, text, event = self._record(index)
            stats.records += 1
            stats.physical_lines += text.count("\n")
            if kind in (RESPONSE, FAULTY):
                stats.events += 1
                if kind == RESPONSE:
                    stats.responses += 1
                else:
                    stats.faults += 1
                if "vendorName" in event:
                    stats.ai += 1
                if "requestHeaders" in event:
                    stats.with_headers += 1
            elif kind == NOISE:
                stats.noise += 1
            else:
                stats.malformed += 1
            yield text

    def write(self, path: str | Path, n: int, start: int = 0, append: bool = False) -> LogStats:
        with open(path, "a" if append else "w", encoding="utf-8", newline="\n") as handle:
            buffer: list[str] = []
            for text in self.lines(n, start):
                buffer.append(text)
                if len(buffer) >= 2000:
                    handle.write("".join(buffer))
                    buffer.clear()
            handle.write("".join(buffer))
        return self.stats

    def count_expected(self, n: int, start: int = 0) -> LogStats:
        """The stats `lines(n, start)` would produce, without producing the lines."""
        previous = self.stats
        for _ in self.lines(n, start):
            pass
        counted, self.stats = self.stats, previous
        return counted

    def event(self, index: int) -> tuple[str, dict[str, Any]]:
        """Record `index` as (kind, event). Noise gives `{}`; malformed gives the event it
        was corrupted from."""
        kind, _, event = self._record(index)
        return kind, event

    def line(self, index: int) -> str:
        return self._record(index)[1]

    # --- one record ---

    def _record(self, index: int) -> tuple[str, str, dict[str, Any]]:
        rng = self._rng
        rng.seed(self._seed_base + index)
        r_kind, r_fault, r_ai, r_headers = rng.random(), rng.random(), rng.random(), rng.random()
        ts_ms = self._start_ms + int(index * self._step_ms + rng.random() * self._step_ms)
        if r_kind < self.noise_ratio:
            return NOISE, self._noise(rng, ts_ms), {}
        faulty = r_fault < self.fault_ratio
        if faulty:
            event = self._faulty(rng, index, ts_ms)
        else:
            event = self._response(rng, index, ts_ms, r_ai < self.ai_ratio,
                                   r_headers < self.headers_ratio)
        log_ms = ts_ms + event["responseLatency"]
        if r_kind < self.noise_ratio + self.malformed_ratio:
            return MALFORMED, self._malformed(rng, log_ms, event, faulty), event
        kind = FAULTY if faulty else RESPONSE
        body = orjson.dumps(event).decode()
        return kind, self._prefix(rng, log_ms, " INFO ELKCounterMetric") + (
            f"apimMetrics: apim:{kind}, properties :{body}\n"
        ), event

    def _prefix(self, rng: random.Random, ms: int, level_logger: str) -> str:
        mdc = _MDC[int(rng.random() * len(_MDC))]
        thread = f"PassThroughMessageProcessor-{1 + int(rng.random() * 100)}"
        return f"{self._clock(ms)} {mdc} [{thread}] {level_logger} "

    def _response(self, rng: random.Random, index: int, ts_ms: int, ai: bool,
                  headers: bool) -> dict[str, Any]:
        api = _pick(rng, _AI_APIS if ai else _APIS)
        method, template = _pick(rng, api.resources)
        status = _pick(rng, _RESPONSE_CODES)
        cache_hit = method == "GET" and rng.random() < 0.05
        backend = 0 if cache_hit else int(rng.expovariate(1 / 120)) + 3
        req_med, resp_med = int(rng.random() * 40), int(rng.random() * 15)
        latency = backend + req_med + resp_med + int(rng.random() * 5)
        request_size = 0 if method in ("GET", "DELETE") else 64 + int(rng.random() * 4000)
        response_size = 0 if status in (204, 304) else 32 + int(rng.random() * 20000)
        egress = rng.random() < 0.03
        common_name = "CN=partner-client,O=Acme" if rng.random() < 0.05 else "N/A"
        event = self._common(rng, index, ts_ms, api, method, template)
        subtype = "AIAPI" if ai else "DEFAULT"
        event.update({
            "eventType": "response", "proxyResponseCode": status, "targetResponseCode": status,
            "responseCacheHit": cache_hit, "backendLatency": backend,
            "requestMediationLatency": req_med, "responseMediationLatency": resp_med,
            "responseLatency": latency, "commonName": common_name,
            "responseContentType": api.content_type, "subType": subtype, "isEgress": egress,
            "responseSize": response_size,
        })
        props: dict[str, Any] = {
            "apiContext": api.context, "userName": event["userName"],
            "requestSize": request_size, "responseSize": response_size,
            "responseContentType": api.content_type, "commonName": common_name,
            "isEgress": egress, "subtype": subtype,
        }
        if headers:
            self._add_headers(rng, event, props, api, status, response_size)
        if ai and api.vendor is not None:
            self._add_ai(rng, event, props, api, ts_ms)
        event["properties"] = props
        return event

    def _faulty(self, rng: random.Random, index: int, ts_ms: int) -> dict[str, Any]:
        api = _pick(rng, _APIS)
        method, template = _pick(rng, api.resources)
        error_type, table = _pick(rng, _FAULT_TYPES)
        code, message, status = _pick(rng, table)
        event = self._common(rng, index, ts_ms, api, method, template)
        unknown_app = error_type == "AUTH" and rng.random() < 0.85
        if unknown_app or rng.random() < 0.03:
            event.update(applicationId="UNKNOWN", applicationName="UNKNOWN",
                         applicationOwner="UNKNOWN")
        if code == 900906 or rng.random() < 0.25:  # no resource matched: no method/template
            del event["apiMethod"], event["apiResourceTemplate"]
        if error_type == "AUTH" and rng.random() < 0.3:
            del event["userName"]
        if rng.random() < 0.2:  # the seed types a fault's requestTimestamp as Long
            event["requestTimestamp"] = ts_ms
        backend = 0
        if error_type == "TARGET_CONNECTIVITY":
            backend = 30000 + int(rng.random() * 2000) if status == 504 else int(rng.random() * 50)
        req_med = int(rng.random() * 30)
        event.update({
            "eventType": "fault", "proxyResponseCode": status, "targetResponseCode": -1,
            "responseCacheHit": False, "backendLatency": backend,
            "requestMediationLatency": req_med, "responseMediationLatency": 0,
            "responseLatency": backend + req_med + int(rng.random() * 5),
            "errorCode": code, "errorMessage": message, "errorType": error_type,
        })
        props: dict[str, Any] = {"apiContext": api.context, "commonName": "N/A",
                                 "isEgress": False, "subtype": "DEFAULT"}
        if "userName" in event:
            props["userName"] = event["userName"]
        event["properties"] = props
        return event

    def _common(self, rng: random.Random, index: int, ts_ms: int, api: _Api, method: str,
                template: str) -> dict[str, Any]:
        app_name, app_id, owner = _pick(rng, self._apps)
        if rng.random() < 0.25:
            agent, platform = _pick(rng, _RAW_AGENTS)
        else:
            agent, platform = _pick(rng, _AGENT_FAMILIES)
        user = _pick(rng, _NAMED_USERS) if rng.random() < 0.1 else _pick(rng, self._users)
        if rng.random() < self.ipv6_ratio:
            ip = _NAMED_IPS[3 + int(rng.random() * 5)] if rng.random() < 0.3 \
                else _pick(rng, self._ipv6)
        else:
            ip = _NAMED_IPS[int(rng.random() * 3)] if rng.random() < 0.1 \
                else _pick(rng, self._ipv4)
        return {
            "apiName": api.name, "apiId": api.api_id, "apiType": api.api_type,
            "apiVersion": api.version, "apiContext": api.context, "apiMethod": method,
            "apiResourceTemplate": template, "apiCreator": api.creator,
            "apiCreatorTenantDomain": api.tenant, "destination": api.destination,
            "applicationId": app_id, "applicationName": app_name, "applicationOwner": owner,
            "correlationId": _uuid4(rng),
            "keyType": "SANDBOX" if rng.random() < 0.15 else "PRODUCTION",
            "gatewayType": "ENVOY" if rng.random() < 0.05 else "SYNAPSE",
            "regionId": _pick(rng, _REGIONS), "userName": user, "userIp": ip,
            "userAgent": agent, "platform": platform,
            "requestTimestamp": self._iso(ts_ms),
        }

    def _add_headers(self, rng: random.Random, event: dict[str, Any], props: dict[str, Any],
                     api: _Api, status: int, response_size: int) -> None:
        token = f"{rng.getrandbits(128):032x}"
        request_headers = {
            _pick(rng, _AUTH_NAMES): f"Bearer eyJ4NXQiOi{token}",
            "Accept": api.content_type, "Host": "gw.example.com:8243",
            "activityid": _uuid4(rng),
        }
        if rng.random() < 0.5:
            request_headers[_pick(rng, _COOKIE_NAMES)] = f"JSESSIONID={token[:16]}; theme=dark"
        if rng.random() < 0.4:
            request_headers[_pick(rng, _APIKEY_NAMES)] = f"ak_{token[16:]}"
        response_headers = {"Content-Type": api.content_type,
                            "Content-Length": str(response_size), "Connection": "keep-alive"}
        if rng.random() < 0.3:
            response_headers[_pick(rng, _APIKEY_NAMES)] = f"ak_{token[:20]}"
        if rng.random() < 0.2:
            response_headers[_pick(rng, _AUTH_NAMES)] = f"Basic {token[:24]}"
        if status >= 400:
            response_headers["X-Error-Reason"] = "backend"
        event["requestHeaders"] = request_headers
        event["responseHeaders"] = response_headers
        props["requestHeaders"] = request_headers
        props["responseHeaders"] = response_headers

    def _add_ai(self, rng: random.Random, event: dict[str, Any], props: dict[str, Any],
                api: _Api, ts_ms: int) -> None:
        assert api.vendor is not None
        vendor, version, models = api.vendor
        model = _pick(rng, models)
        prompt = 10 + int(rng.expovariate(1 / 400))
        completion = 0 if event["apiResourceTemplate"] == "/embeddings" \
            else 1 + int(rng.expovariate(1 / 250))
        hour = self._iso(ts_ms)[:13] + ":00:00Z"
        event.update(vendorName=vendor, vendorVersion=version, model=model,
                     promptTokens=prompt, completionTokens=completion,
                     totalTokens=prompt + completion, hour=hour)
        props["aiMetadata"] = {"vendorName": vendor, "vendorVersion": version, "model": model}
        props["aiTokenUsage"] = {"promptTokens": prompt, "completionTokens": completion,
                                 "totalTokens": prompt + completion, "hour": hour}

    def _noise(self, rng: random.Random, ts_ms: int) -> str:
        uid = _uuid4(rng)
        if rng.random() < 0.15:
            first, rest = _STACK_TRACE.format(uid=uid).split(" ", 1)
            return self._prefix(rng, ts_ms, first) + rest + "\n"
        template = _pick(rng, _NOISE_TEMPLATES)
        text = template.format(ctx=_pick(rng, _APIS).context, uid=uid,
                               n=int(rng.random() * 10000))
        level, logger, message = _split_level_logger(text)
        return self._prefix(rng, ts_ms, f"{level} {logger}") + message + "\n"

    def _malformed(self, rng: random.Random, ms: int, event: dict[str, Any],
                   faulty: bool) -> str:
        body = orjson.dumps(event).decode()
        kind = FAULTY if faulty else RESPONSE
        variant = int(rng.random() * 4)
        if variant == 0:  # truncated JSON (a line cut short by a crash or a full disk)
            message = f"apimMetrics: apim:{kind}, properties :{body[: 5 + len(body) // 3]}"
        elif variant == 1:
            message = f"apimMetrics: apim:unknown, properties :{body}"
        elif variant == 2:
            not_object = ('[1,2,3]', '"properties"', 'null', '42')[int(rng.random() * 4)]
            message = f"apimMetrics: apim:{kind}, properties :{not_object}"
        else:
            message = f"apimMetrics: apim:{kind}, properties :"
        return self._prefix(rng, ms, " INFO ELKCounterMetric") + message + "\n"

    # --- time formatting (cached per second: records arrive in time order) ---

    def _split_second(self, ms: int) -> tuple[str, str, int]:
        second, millis = divmod(ms, 1000)
        cached_second, iso, clock = self._second_cache
        if second != cached_second:
            moment = time.gmtime(second)
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
            clock = time.strftime("%H:%M:%S", moment)
            self._second_cache = (second, iso, clock)
        return iso, clock, millis

    def _iso(self, ms: int) -> str:
        iso, _, millis = self._split_second(ms)
        return f"{iso}.{millis:03d}Z"

    def _clock(self, ms: int) -> str:
        _, clock, millis = self._split_second(ms)
        return f"{clock},{millis:03d}"


def _uuid4(rng: random.Random) -> str:
    """What `str(uuid.UUID(int=rng.getrandbits(128), version=4))` gives, 3x faster."""
    bits = rng.getrandbits(128)
    bits = (bits & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pick(rng: random.Random, items: Any) -> Any:
    return items[int(rng.random() * len(items))]


def _split_level_logger(text: str) -> tuple[str, str, str]:
    """' INFO Logger message' -> (' INFO', 'Logger', 'message'): keeps %5p's padding."""
    level, rest = text[:5], text[6:]
    logger, _, message = rest.partition(" ")
    return level, logger, message


def _seed_tag(rng: random.Random) -> str:
    return f"{rng.getrandbits(32):08x}"


def _random_ipv6(rng: random.Random) -> str:
    groups = [rng.randrange(0x10000) for _ in range(8)]
    groups[0], groups[1] = 0x2001, 0x0DB8
    shape = rng.random()
    if shape < 0.4:  # full, zero-padded
        return ":".join(f"{g:04x}" for g in groups)
    if shape < 0.7:  # compressed run of zeros
        return f"2001:db8:{groups[2]:x}::{groups[7]:x}"
    if shape < 0.85:
        return f"2001:db8::{groups[7]:x}"
    return ":".join(f"{g:x}" for g in groups)  # unpadded, uncompressed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a realistic apim_metrics.log.")
    parser.add_argument("--lines", type=int, required=True, help="number of log records")
    parser.add_argument("--out", required=True, help="file to write ('-' for stdout)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args(argv)
    generator = LogGenerator(seed=args.seed)
    if args.out == "-":
        for text in generator.lines(args.lines, args.start_index):
            sys.stdout.write(text)
        stats = generator.stats
        out = sys.stderr
    else:
        stats = generator.write(args.out, args.lines, args.start_index, append=args.append)
        out = sys.stdout
    out.write(orjson.dumps(stats.as_dict()).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
