from pathlib import Path

import pytest

from connector.mapping import load_mappings
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
