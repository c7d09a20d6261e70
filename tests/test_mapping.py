import math
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import IssueCode
from connector.mapping import (
    MISSING,
    SECTIONS,
    TYPES,
    ConversionProblem,
    build_mapping_set,
    compile_mapping_data,
    convert,
    encodable,
    load_mappings,
    sanitise,
)
from connector.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = load_mappings(ROOT / "mappings")

SEED_TRAITS = {"id", "createdAt", "modifiedTime", "firstSeenTime", "lastSeenTime", "name",
               "email", "username", "company", "campaign", "clearbit", "last24HourAggResults",
               "metadata", "userAgent"}
SEED_COMPANY = {"id", "created", "modifiedTime", "firstSeenTime", "lastSeenTime", "ipAddress",
                "companyDomain", "ttfhw_s", "metadata"}


def test_shipped_mappings_cover_every_seed_field():
    traits = {r.target.split(".", 1)[1] for r in SHIPPED.rules("identify")
              if r.target.startswith("traits.")}
    assert traits >= SEED_TRAITS
    assert {r.target for r in SHIPPED.rules("company_object")} >= SEED_COMPANY


def user(**extra):
    doc = {"user_id": "u1", "modified_time": "2024-05-01T10:00:00.1234567Z"}
    doc.update(extra)
    return doc


def test_fallback_chain_takes_first_present_value():
    a = SHIPPED.apply("identify", user(metadata={"email": "m@x.io"}), {})
    assert a.message["traits"]["email"] == "m@x.io"
    b = SHIPPED.apply("identify", user(email="top@x.io", metadata={"email": "m@x.io"}), {})
    assert b.message["traits"]["email"] == "top@x.io"


def test_name_falls_back_to_first_and_last():
    a = SHIPPED.apply("identify", user(first_name="Zoë", last_name="Ångström"), {})
    assert a.message["traits"]["name"] == "Zoë Ångström"
    b = SHIPPED.apply("identify", user(first_name="Solo"), {})
    assert b.message["traits"]["name"] == "Solo"


def test_missing_values_are_omitted_never_null():
    a = SHIPPED.apply("identify", user(email=None, name="", campaign={}), {})
    traits = a.message["traits"]
    assert "email" not in traits and "name" not in traits and "campaign" not in traits
    assert None not in traits.values()
    assert ("identify.traits.email", 1) in SHIPPED.field_events(a)  # counted as missing


def test_timestamps_are_normalised_and_bad_ones_reported():
    a = SHIPPED.apply("identify", user(created="not-a-date", first_seen_time="2024-01-02T03:04:05"),
                      {})
    assert a.message["traits"]["firstSeenTime"] == "2024-01-02T03:04:05.000Z"
    assert a.message["traits"]["modifiedTime"] == "2024-05-01T10:00:00.123Z"
    assert "createdAt" not in a.message["traits"]
    assert [code for code, _ in a.issues] == ["BAD_TIMESTAMP"]


def test_missing_user_id_is_reported_as_required():
    a = SHIPPED.apply("identify", {"email": "x@y.z"}, {})
    assert a.missing_required == ["userId"]


def test_company_object_and_ttfhw_fallback():
    company = {"company_id": "c1", "created": "2024-01-01T00:00:00Z",
               "first_seen_time": "2024-01-01T01:00:00Z", "domain_name": "acme.io",
               "metadata": {"name": "Acme", "employees": "12"}}
    a = SHIPPED.apply("identify", user(company_id="c1"), {"@company": company})
    obj = a.message["traits"]["company"]
    assert obj["id"] == "c1" and obj["companyDomain"] == "acme.io"
    assert obj["ttfhw_s"] == 3600
    assert obj["employee_count"] == 12
    given = dict(company, ttfhw_s=42)
    assert SHIPPED.apply("identify", user(), {"@company": given}).message["traits"]["company"][
        "ttfhw_s"] == 42


def test_context_from_geo_ip_and_user_agent():
    a = SHIPPED.apply("identify", user(ip_address="10.1.2.3", user_agent_string="curl/8",
                                       geo_ip={"city_name": "Oslo", "country_name": "Norway",
                                               "region_name": "Oslo", "latitude": 59.9,
                                               "location": {"lon": 10.7}}), {})
    ctx = a.message["context"]
    assert ctx["ip"] == "10.1.2.3" and ctx["userAgent"] == "curl/8"
    assert ctx["location"] == {"city": "Oslo", "country": "Norway", "region": "Oslo",
                               "latitude": 59.9, "longitude": 10.7}


@pytest.mark.parametrize(("body", "expected"), [
    ('[[identify]]\ntarget = "userId"\nfrom = ["user_id"]\ntype = "strng"\n', "unknown type"),
    ('[[identify]]\nfrom = ["user_id"]\n', "needs a non-empty string `target`"),
    ('[[identify]]\ntarget = "x"\nfrom = []\n', "needs `from`"),
    ('[[identify]]\ntarget = "x"\nfrom = ["a..b"]\n', "bad source path"),
    ('[[identify]]\ntarget = "x"\nfrom = ["a"]\ncolour = 1\n', "unknown key"),
    ('[[identify]\ntarget = "x"\n', "not valid TOML"),
    ('[[identify]]\ntarget = "x"\nfrom = [{ join = "a" }]\n', "join needs a list"),
])
def test_broken_mapping_file_names_file_entry_and_reason(tmp_path, body, expected):
    (tmp_path / "users.toml").write_text(body)
    (tmp_path / "companies.toml").write_text((ROOT / "mappings/companies.toml").read_text())
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    message = str(err.value)
    assert "users.toml" in message and expected in message
    if "TOML" not in expected:
        assert "entry 1" in message or "[identify]" in message


def test_missing_mapping_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_mappings(tmp_path)


def test_version_changes_when_a_mapping_changes(tmp_path):
    for name in ("users.toml", "companies.toml"):
        (tmp_path / name).write_text((ROOT / "mappings" / name).read_text())
    before = load_mappings(tmp_path).version
    with (tmp_path / "users.toml").open("a") as f:
        f.write('\n[[identify]]\ntarget = "traits.extra"\nfrom = ["extra"]\n')
    assert load_mappings(tmp_path).version != before


# --- item 1: a bad value is that record's problem ---------------------------------------------


def non_finite_or_none(value, depth=0):
    """Every NaN/Infinity or None leaf in a value (a path list), for assertions."""
    found = []
    if isinstance(value, float) and not math.isfinite(value):
        found.append("non-finite")
    elif isinstance(value, dict):
        for v in value.values():
            found += non_finite_or_none(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            found += non_finite_or_none(v, depth + 1)
    return found


def company_with(employees):
    return {"company_id": "c1", "modified_time": "2024-01-01T00:00:00Z",
            "metadata": {"name": "Acme", "employees": employees}}


@pytest.mark.parametrize("employees", ["NaN", "Infinity", "-Infinity", 1e30,
                                       "99999999999999999999", 2**64, -(2**63) - 1,
                                       float("nan"), float("inf"), "1" * 5000, "12.5", True])
def test_poison_employee_counts_are_left_out_and_named(employees):
    a = SHIPPED.apply("identify", user(company_id="c1"), {"@company": company_with(employees)})
    company = a.message["traits"]["company"]
    assert "employee_count" not in company
    assert any(code == "BAD_VALUE" and "traits.company.employee_count" in detail
               for code, detail in a.issues), a.issues
    group = SHIPPED.apply("group", company_with(employees), {})
    assert "employees" not in group.message["traits"]
    assert orjson.dumps([a.message, group.message])  # nothing the encoder refuses
    assert not non_finite_or_none(a.message)


@pytest.mark.parametrize(("raw", "expected"), [
    ("12", 12), (12.0, 12), ("1e3", 1000), (" 7 ", 7), (2**63 - 1, 2**63 - 1),
    ("9223372036854775807", 2**63 - 1)])
def test_integer_conversions_that_fit(raw, expected):
    assert convert(raw, "int")[0] == expected


@pytest.mark.parametrize(("type_name", "raw"), [
    ("float", float("nan")), ("float", "-Infinity"), ("float", "1e400"), ("float", True),
    ("string", float("inf")), ("string", 2**80), ("string", "half \ud83d"),
    ("int", 2**63), ("int", float("-inf")), ("int", [1]), ("datetime", float("nan")),
    ("datetime", 10**30), ("datetime", 1e300), ("datetime", "0001-01-01T00:00:00+01:00"),
])
def test_values_json_cannot_carry_are_refused_with_a_code(type_name, raw):
    with pytest.raises(ConversionProblem) as err:
        convert(raw, type_name)
    assert err.value.code in ("BAD_VALUE", "BAD_TIMESTAMP")


def test_float_keeps_big_integers_as_floats_and_rejects_none_of_the_finite():
    assert convert(2**70, "float") == (float(2**70), True)
    assert convert(-0.0, "float") == (-0.0, False)
    assert convert(1e308, "float") == (1e308, False)


def test_free_form_values_lose_only_their_bad_leaves():
    deep: dict = {}
    node = deep
    for _ in range(300):
        node["d"] = {}
        node = node["d"]
    metadata = {"ok": 1, "nan": float("nan"), "big": 2**70, "list": [1, float("inf"), "x"],
                "text": "half \udc00 pair", 5: "int key", "deep": deep,
                "nested": {"fine": [True, None, -0.0, "ü"]}}
    a = SHIPPED.apply("identify", user(metadata=metadata), {})
    sent = a.message["traits"]["metadata"]
    assert sent["ok"] == 1 and sent["list"] == [1, "x"]
    assert "nan" not in sent and "big" not in sent and "deep" in sent
    assert sent["text"] == "half \ufffd pair"
    assert sent["nested"] == {"fine": [True, None, -0.0, "ü"]}
    paths = " | ".join(detail for code, detail in a.issues if code == "BAD_VALUE")
    for path in ("traits.metadata.nan", "traits.metadata.big", "traits.metadata.list[1]",
                 "traits.metadata.text", "traits.metadata.deep"):
        assert path in paths
    assert orjson.dumps(a.message)
    assert metadata["nan"] != metadata["nan"]  # the source record itself is untouched


def test_a_poison_user_id_makes_the_record_invalid():
    for bad in (float("nan"), 2**70, {"a": 1}, [1], "half \ud800"):
        a = SHIPPED.apply("identify", user(user_id=bad), {})
        assert a.missing_required == ["userId"], bad
        assert a.issues and a.issues[0][0] == "BAD_VALUE"


def nested(depth, leaf):
    """`{"d": {"d": ... leaf}}`, `depth` levels deep."""
    value = leaf
    for _ in range(depth):
        value = {"d": value}
    return value


# JSON-ish values of any kind, size and depth, including what no encoder writes.
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**300),
    st.integers(min_value=-(2**300), max_value=-(2**63) + 2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 1e30]),
    st.text(st.characters(exclude_categories=()), max_size=8),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "99999999999999999999", "1e30", "\ud800",
                     "\x00\x1f\x7f", "2024-13-45T00:00:00Z", "0001-01-01T00:00:00+01:00"]),
)
JSONISH = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(st.characters(exclude_categories=()), max_size=4), inner,
                      max_size=3),
    max_leaves=8,
) | st.integers(min_value=60, max_value=300).map(lambda n: nested(n, float("nan")))

USER_FIELDS = ["user_id", "name", "email", "first_name", "last_name", "created", "modified_time",
               "first_seen_time", "metadata", "metadata.email", "metadata.name", "geo_ip",
               "geo_ip.latitude", "geo_ip.location.lon", "ip_address", "campaign", "clearbit",
               "user_agent", "user_agent_string", "company_id", "extra"]
COMPANY_FIELDS = ["company_id", "name", "created", "modified_time", "first_seen_time",
                  "ttfhw_s", "metadata", "metadata.employees", "metadata.name", "metadata.plan",
                  "company_domain", "ip_address", "extra"]


def put(doc, dotted, value):
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(USER_FIELDS + [f"@{f}" for f in COMPANY_FIELDS]), value=JSONISH)
def test_any_value_anywhere_maps_to_an_encodable_message_or_an_issue(field, value):
    doc = user(company_id="c1", name="Ann", metadata={"plan": "pro"}, created="2024-01-01")
    company = company_with(12)
    put(company if field.startswith("@") else doc, field.lstrip("@"), value)
    a = SHIPPED.apply("identify", doc, {"@company": company, "@metrics": None}, cache={})
    g = SHIPPED.apply("group", company, {})
    for applied in (a, g):
        assert {code for code, _ in applied.issues} <= set(IssueCode)
        orjson.dumps(applied.message, option=orjson.OPT_SORT_KEYS)  # never raises
        assert not non_finite_or_none(applied.message)


@settings(max_examples=100, deadline=None)
@given(value=JSONISH)
def test_sanitise_leaves_only_what_json_carries(value):
    cleaned, problems = sanitise(value, "v")
    if encodable(value):
        assert not problems
    if cleaned is MISSING:
        assert problems  # the value itself could not be kept: said so
    else:
        orjson.dumps(cleaned)
        assert encodable(cleaned) and not non_finite_or_none(cleaned)
    assert all(path.startswith("v") for path, _ in problems)


# --- item 7: mapping files are checked whole at load -------------------------------------------
def write_maps(tmp_path, users_extra="", companies_extra="", users_body=None):
    users = users_body if users_body is not None else (ROOT / "mappings/users.toml").read_text()
    (tmp_path / "users.toml").write_text(users + users_extra)
    (tmp_path / "companies.toml").write_text(
        (ROOT / "mappings/companies.toml").read_text() + companies_extra)


@pytest.mark.parametrize(("extra", "expected"), [
    ('[[identify]]\ntarget = "traits.name.first"\nfrom = ["first_name"]\ntype = "string"\n',
     "already puts a value there"),
    ('[[identify]]\ntarget = "traits.metadata.plan"\nfrom = ["plan"]\n',
     "already puts a value there"),
    ('[[identify]]\ntarget = "traits.email"\nfrom = ["mail"]\ntype = "string"\n',
     "the same target as entry"),
    ('[[identify]]\ntarget = "traits"\nfrom = ["metadata"]\ntype = "object"\n',
     "cannot be replaced"),
    ('[[identify]]\ntarget = "context"\nfrom = ["ip_address"]\ntype = "string"\n',
     "cannot be replaced"),
    ('[[identify]]\ntarget = "userId.raw"\nfrom = ["user_id"]\ntype = "string"\n',
     "is a single value"),
    ('[[identify]]\ntarget = "plan"\nfrom = ["plan"]\n', "is not a field of a Segment identify"),
    ('[[identify]]\ntarget = "context.library"\nfrom = ["lib"]\ntype = "object"\n',
     "set by the Segment library"),
    ('[[identify]]\ntarget = "traits.age"\nfrom = ["age"]\ntype = "int"\ndefault = "old"\n',
     "`default` does not fit type 'int'"),
    ('[[identify]]\ntarget = "traits.score"\nfrom = ["s"]\ntype = "float"\ndefault = nan\n',
     "`default` does not fit type 'float'"),
    ('[[identify]]\ntarget = "traits.since"\nfrom = ["s"]\ntype = "datetime"\n'
     'default = "soon"\n', "`default` does not fit type 'datetime'"),
    ('[[identify]]\ntarget = "traits.day"\nfrom = ["d"]\ndefault = 1979-05-27\n',
     "is not a JSON value"),
    ('[[identify]]\ntarget = "traits.flag"\nfrom = ["f"]\ntype = "bool"\ndefault = 1\n',
     "`default` does not fit type 'bool'"),
    ('[[identify]]\ntarget = "traits.x"\nfrom = ["@nowhere.x"]\n', "unknown joined document"),
    ('[[identify]]\ntarget = "traits.x."\nfrom = ["x"]\n', "needs a non-empty string `target`"),
])
def test_a_mapping_that_cannot_work_is_refused_at_load(tmp_path, extra, expected):
    write_maps(tmp_path, users_extra="\n" + extra)
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    message = str(err.value)
    assert "users.toml" in message and expected in message
    assert "entry" in message


@pytest.mark.parametrize(("extra", "expected"), [
    ('[[company_object]]\ntarget = "parent"\nfrom = ["parent"]\ntype = "object"\n'
     'mapping = "company_object"\n', "applies itself"),
    ('[[group]]\ntarget = "userId"\nfrom = ["owner"]\ntype = "string"\n',
     "is not a field of a Segment group"),
    ('[[group]]\ntarget = "groupId"\nfrom = ["other"]\ntype = "string"\n',
     "the same target"),
])
def test_company_mapping_problems_are_refused_at_load(tmp_path, extra, expected):
    write_maps(tmp_path, companies_extra="\n" + extra)
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    assert expected in str(err.value)


def test_identify_without_a_required_user_id_is_refused(tmp_path):
    body = (ROOT / "mappings/users.toml").read_text().replace(
        'type = "string"\nrequired = true\n', 'type = "string"\n', 1)
    write_maps(tmp_path, users_body=body)
    with pytest.raises(ConfigError, match="needs a `userId` entry with required = true"):
        load_mappings(tmp_path)


def test_defaults_are_converted_at_load(tmp_path):
    write_maps(tmp_path, users_extra='\n[[identify]]\ntarget = "traits.since"\nfrom = ["s"]\n'
                                     'type = "datetime"\ndefault = 2024-05-01T10:00:00Z\n'
                                     '\n[[identify]]\ntarget = "traits.n"\nfrom = ["n"]\n'
                                     'type = "int"\ndefault = "42"\n')
    maps = load_mappings(tmp_path)
    traits = maps.apply("identify", user(), {}).message["traits"]
    assert traits["since"] == "2024-05-01T10:00:00.000Z" and traits["n"] == 42


TARGETS = st.sampled_from([
    "userId", "groupId", "timestamp", "traits", "context", "traits.a", "traits.a.b",
    "traits.name", "traits.company", "context.ip", "context.library", "context.location.city",
    "x", "x.y", "a..b", "", "traits.", ".x", "id", "metadata", "metadata.plan"]) | st.text(
    max_size=6)
SOURCES = st.one_of(
    st.sampled_from(["user_id", "name", "@company", "@metrics", "@company.metadata", "@x.y",
                     "metadata", "a..b", "", "company_id", "modified_time"]),
    st.fixed_dictionaries({"join": st.lists(st.sampled_from(["first_name", "x", ""]),
                                            max_size=3)}, optional={"sep": LEAVES}),
    st.fixed_dictionaries({"seconds_between": st.lists(st.sampled_from(["created", "x", ""]),
                                                       max_size=3)}),
    LEAVES,
)
RULE = st.fixed_dictionaries(
    {"target": TARGETS | LEAVES},
    optional={
        "from": st.lists(SOURCES, max_size=3) | SOURCES,
        "type": st.sampled_from(TYPES + ("strng",)) | LEAVES,
        "default": JSONISH | st.dates() | st.datetimes(),
        "required": st.booleans() | LEAVES,
        "personal": st.booleans(), "trimmable": st.booleans(), "volatile": st.booleans(),
        "mapping": st.sampled_from((*SECTIONS, "nope")),
        "description": st.text(max_size=5) | LEAVES,
        "colour": st.integers(),
    })
ID_RULES = {
    "identify": {"target": "userId", "from": ["user_id"], "type": "string", "required": True},
    "group": {"target": "groupId", "from": ["company_id"], "type": "string", "required": True},
}


GOOD_TARGETS = {
    "identify": ["traits.a", "traits.b.c", "traits.company", "context.ip", "traits.m"],
    "group": ["traits.a", "traits.x.y", "context.ip", "traits.m"],
    "company_object": ["a", "b.c", "name", "metadata"],
}
GOOD_RULE = {name: st.fixed_dictionaries(
    {"target": st.sampled_from(targets),
     "from": st.lists(st.sampled_from(["name", "metadata", "@company", "@metrics", "created",
                                       "metadata.x", "company_id"]), min_size=1, max_size=2)},
    optional={"type": st.sampled_from(TYPES), "required": st.booleans(),
              "trimmable": st.booleans(), "volatile": st.booleans()})
    for name, targets in GOOD_TARGETS.items()}
WITH_DEFAULT = st.fixed_dictionaries({
    "target": st.sampled_from(["traits.d", "context.d"]), "from": st.just(["nothing"]),
    "type": st.sampled_from(TYPES), "default": LEAVES})
SUB_MAPPING = st.fixed_dictionaries({
    "target": st.sampled_from(["traits.co", "traits.company"]), "from": st.just(["@company"]),
    "type": st.just("object"), "mapping": st.sampled_from(["company_object", "group"])})


def section_rules(name):
    extra = [WITH_DEFAULT, SUB_MAPPING] if name == "identify" else []
    rules = st.lists(st.one_of(*[GOOD_RULE[name]] * 6, *extra, RULE),
                     max_size=4, unique_by=lambda r: str(r.get("target")))
    return rules.flatmap(
        lambda rules: st.sampled_from([[ID_RULES[name], *rules], [ID_RULES[name], *rules],
                                       rules] if name in ID_RULES else [rules]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=st.fixed_dictionaries({"identify": section_rules("identify")}, optional={
           "mapping": st.dictionaries(st.text(), LEAVES), "bogus": st.lists(RULE, max_size=1)}),
       companies=st.fixed_dictionaries({"group": section_rules("group"),
                                        "company_object": section_rules("company_object")},
                                       optional={"identify": section_rules("identify")}),
       value=JSONISH)
def test_random_rule_sets_load_or_raise_config_error_and_loaded_ones_map(users, companies,
                                                                         value):
    try:
        maps = build_mapping_set(
            [(Path("users.toml"), compile_mapping_data(Path("users.toml"), users)),
             (Path("companies.toml"), compile_mapping_data(Path("companies.toml"), companies))],
            Path("."), "test")
    except ConfigError as exc:
        assert "users.toml" in str(exc) or "companies.toml" in str(exc) or "mappings in" in str(
            exc)
        return
    company = company_with(value)
    doc = user(name=value, company_id="c1", metadata={"x": value}, first_name="A")
    for section, record, joins in (("identify", doc, {"@company": company, "@metrics": value}),
                                   ("group", company, {}), ("company_object", company, {})):
        applied = maps.apply(section, record, joins, cache={})
        orjson.dumps(applied.message, option=orjson.OPT_SORT_KEYS)
        assert not non_finite_or_none(applied.message)
        if section in ("identify", "group"):
            for key in ("traits", "context"):
                assert isinstance(applied.message.get(key, {}), dict)


# --- issue 12 item 1: one language for both paths: template and value sources, file tables ---
TEMPLATE_RULES = ('\n[[identify]]\ntarget = "traits.route"\n'
                  'from = [{template = "{metadata.ctx}{metadata.path}"}, {value = "none"}]\n'
                  'type = "string"\n')


def test_template_and_value_sources_in_a_sync_mapping(tmp_path):
    write_maps(tmp_path, users_extra=TEMPLATE_RULES)
    maps = load_mappings(tmp_path)
    traits = maps.apply("identify", user(metadata={"ctx": "/api/", "path": "/users"}),
                        {}).message["traits"]
    assert traits["route"] == "/api/users"  # the "/" is not doubled
    traits = maps.apply("identify", user(metadata={"ctx": "/api", "path": 7}),
                        {}).message["traits"]
    assert traits["route"] == "/api7"
    # A template needs every piece: without one, the chain moves on to the constant.
    for metadata in ({"ctx": "/api"}, {"ctx": "/api", "path": ""}, {"ctx": [], "path": "/x"}):
        traits = maps.apply("identify", user(metadata=metadata), {}).message["traits"]
        assert traits["route"] == "none"


@given(ctx=st.text(max_size=8), path=st.text(max_size=8))
@settings(max_examples=60, deadline=None)
def test_a_template_is_its_pieces_joined_without_a_doubled_slash(ctx, path):
    rules = {"identify": [{"target": "userId", "from": ["id"], "type": "string",
                           "required": True},
                          {"target": "traits.t", "from": [{"template": "{a}{b}"}],
                           "type": "any"}]}
    sections = compile_mapping_data(Path("t.toml"), rules)
    getter = sections["identify"][1].sources[0]
    value = getter({"a": ctx, "b": path}, {})
    if not ctx or not path:
        assert value is MISSING
    else:
        expected = ctx + (path[1:] if ctx.endswith("/") and path.startswith("/") else path)
        assert value == expected


@pytest.mark.parametrize(("extra", "expected"), [
    ('[[identify]]\ntarget = "traits.t"\nfrom = [{template = "{a"}]\n', "unbalanced"),
    ('[[identify]]\ntarget = "traits.t"\nfrom = [{template = "plain"}]\n', "no {placeholder}"),
    ('[[identify]]\ntarget = "traits.t"\nfrom = [{template = "{@nowhere.x}"}]\n',
     "unknown joined document"),
    ('[[identify]]\ntarget = "traits.t"\nfrom = [{value = ""}]\n', "can be sent"),
    ('[[identify]]\ntarget = "traits.t"\nfrom = [{value = 1, template = "{a}"}]\n',
     "unknown source"),
])
def test_bad_template_or_value_sources_are_refused_with_the_line(tmp_path, extra, expected):
    write_maps(tmp_path, users_extra="\n" + extra)
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    message = str(err.value)
    lines = (tmp_path / "users.toml").read_text().splitlines()
    line = len(lines) - lines[::-1].index("[[identify]]")
    assert "users.toml" in message and expected in message and f"(line {line})" in message


def test_file_tables_the_sync_does_not_read_are_refused(tmp_path):
    write_maps(tmp_path, users_extra='\n[options]\nunknown_values = ["N/A"]\n')
    with pytest.raises(ConfigError, match=r"users.toml.*\[options\] 'unknown_values'.*unknown"):
        load_mappings(tmp_path)
