"""Unit tests of the HTTP toolkit's pure components: budget, paginators, egress, error table, records."""

from __future__ import annotations

import email.utils

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.httpkit.budget import Budget
from connectors.httpkit.components import (
    CursorParamPaginator, ErrorRule, HttpStreamSpec, LinkHeaderPaginator, NextTokenPaginator, OffsetPaginator,
)
from connectors.httpkit.egress import EgressPolicy, EgressRefused
from connectors.httpkit.errors import DEFAULT_RULES, HttpFailed, classify, retry_after_seconds
from connectors.httpkit.paginate import (
    LoopGuard, Page, PageRequest, check_first_page, links, next_request, page_count,
)
from connectors.httpkit.records import loads, to_batch
from engine.core.secrets import Redactor


def test_budget_holds_the_aggregate_rate_under_the_configured_one() -> None:
    budget = Budget(rate=10.0, burst=5)
    now = 1000.0
    sends = []
    for _ in range(100):  # 100 callers asking at the same instant
        grant = budget.acquire(now)
        assert grant.deferred_until is None and grant.clear_until == 0.0  # a rate: every request asks
        sends.append(now + grant.wait)
    # The first `burst` go at once; after that, no 1-second window holds more than rate + burst.
    assert sends[:5] == pytest.approx([now] * 5)
    for start in sends:
        assert sum(1 for t in sends if start <= t < start + 1.0) <= 10 + 5


def test_budget_pause_and_deferral() -> None:
    budget = Budget(rate=None, max_wait_s=60)
    assert budget.acquire(900.0).clear_until == pytest.approx(900.0 + 0.2)  # nothing limits it yet
    budget.pause(1030.0, "retry-after")
    assert budget.acquire(1000.0).wait == pytest.approx(30.0)
    budget.observe(remaining=0, reset_at=5000.0, now=1000.0, limit=5000)
    grant = budget.acquire(1000.0)
    assert grant.deferred_until == pytest.approx(5001.0) and "quota spent" in grant.reason


def test_a_pause_set_after_a_turn_was_reserved_is_visible_to_its_holder() -> None:
    budget = Budget(rate=2.0, burst=1)
    turns = [budget.acquire(1000.0).wait for _ in range(4)]
    assert turns == pytest.approx([0.0, 0.5, 1.0, 1.5])  # reserved ahead at the configured rate
    assert not budget.paused(1000.6)
    budget.pause(1003.0, "429 with Retry-After: 3", scope="property 1")
    assert budget.paused(1001.0, "property 1") and not budget.paused(1001.0, "property 2")
    budget.pause(1003.0, "429 with Retry-After: 3")
    assert budget.paused(1001.0, "property 2") and not budget.paused(1003.0)
    assert budget.acquire(1001.0).wait >= 2.0  # asking again waits the pause out


def test_a_spent_quota_of_one_scope_holds_only_that_scope() -> None:
    budget = Budget(rate=None, max_wait_s=60)
    # GA4 keeps quotas per property: one property's spent day leaves another's requests alone.
    budget.observe(remaining=0, reset_at=5000.0, now=1000.0, limit=6, window="tokensPerDay", scope="property 1")
    held = budget.acquire(1000.0, "property 1")
    assert held.deferred_until == pytest.approx(5001.0) and "tokensPerDay quota for property 1" in held.reason
    assert budget.acquire(1000.0, "property 2").deferred_until is None
    budget.observe(remaining=1, reset_at=1100.0, now=1000.0, limit=5000, window="tokensPerHour", scope="property 3")
    assert budget.acquire(1000.0, "property 2").clear_until > 0  # nor does another's slow-down
    # The credential's own quota holds every scope.
    budget.observe(remaining=0, reset_at=6000.0, now=1000.0, limit=5000)
    assert budget.acquire(1000.0, "property 2").deferred_until == pytest.approx(6001.0)


def test_budget_slows_down_near_the_end_of_a_window() -> None:
    budget = Budget(rate=None)
    budget.observe(remaining=100, reset_at=1100.0, now=1000.0, limit=5000)  # 2% left, 100 s to go
    waits = [budget.acquire(1000.0).wait for _ in range(30)]
    assert waits[-1] > 1.0  # spread at ~1 request/s instead of all at once


def test_link_header_and_page_count() -> None:
    header = ('<https://api.github.com/repositories/1/issues?page=2&per_page=100>; rel="next", '
              '<https://api.github.com/repositories/1/issues?page=515&per_page=100>; rel="last"')
    assert links({"link": header})["next"].endswith("page=2&per_page=100")
    paginator = LinkHeaderPaginator(type="link_header")
    page = Page(PageRequest("https://x/i"), {"link": header}, [], [{"id": 1}])
    assert page_count(paginator, page) == 515
    assert next_request(paginator, page).url.endswith("page=2&per_page=100")  # type: ignore[union-attr]
    assert page_count(paginator, Page(PageRequest("https://x/i"), {}, [], [{"id": 1}])) == 1


def test_next_token_continues_past_an_empty_page_and_stops_without_token() -> None:
    paginator = NextTokenPaginator(type="next_token", token_path=("meta", "next"), param="cursor")
    empty = Page(PageRequest("https://x/t"), {}, {"meta": {"next": "abc"}, "data": []}, [])
    assert next_request(paginator, empty) == PageRequest("https://x/t", {"cursor": "abc"})
    assert next_request(paginator, Page(PageRequest("https://x/t"), {}, {"meta": {}}, [{}])) is None


def test_offset_stops_at_the_reported_total_and_sends_strings_when_asked() -> None:
    paginator = OffsetPaginator(type="offset", limit=100, total_path=("rowCount",), in_body=True, as_string=True)
    req = PageRequest("https://x/r", body={"offset": "0", "limit": "100"}, method="POST")
    nxt = next_request(paginator, Page(req, {}, {"rowCount": 150}, [{}] * 100))
    assert nxt is not None and nxt.body == {"offset": "100", "limit": "100"}
    assert next_request(paginator, Page(nxt, {}, {"rowCount": 150}, [{}] * 50)) is None


def test_cursor_param_steps_through_a_page_that_shares_one_value() -> None:
    paginator = CursorParamPaginator(type="cursor_param", param="since", field="updated_at", size=2)
    req = PageRequest("https://x/i", {"since": "2024-01-01T00:00:00Z"})
    tie = next_request(paginator, Page(req, {}, [], [{}, {}]), cursor_value="2024-01-01T00:00:00Z")
    assert tie is not None and tie.params == {"since": "2024-01-01T00:00:00Z", "page": 2}
    moved = next_request(paginator, Page(tie, {}, [], [{}, {}]), cursor_value="2024-01-02T00:00:00Z")
    assert moved is not None and moved.params == {"since": "2024-01-02T00:00:00Z"}


def test_loop_guard_fails_a_repeated_token() -> None:
    guard = LoopGuard()
    guard.check(PageRequest("https://x/t", {"cursor": "a"}))
    with pytest.raises(HttpFailed, match="already fetched"):
        guard.check(PageRequest("https://x/t", {"cursor": "a"}))


@pytest.mark.parametrize("url, reason", [
    ("http://api.example.com/x", "not https"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://169.254.10.1/x", "link-local"),
    ("https://10.0.0.5/x", "private"),
    ("https://[::ffff:192.168.1.1]/x", "private"),
    ("https://metadata.google.internal/x", "metadata"),
    ("https://127.0.0.1/x", "loopback"),
])
def test_egress_refuses(url: str, reason: str) -> None:
    with pytest.raises(EgressRefused, match=reason):
        EgressPolicy().check_url(url)


def test_egress_allows_loopback_http_only_in_dev_mode() -> None:
    EgressPolicy(allow_loopback=True).check_url("http://127.0.0.1:8080/x")
    EgressPolicy().check_url("https://api.github.com/repos")
    with pytest.raises(EgressRefused):
        EgressPolicy(allow_loopback=True).check_url("http://10.1.1.1/x")


def test_egress_allows_what_an_operator_lists_and_never_metadata(monkeypatch) -> None:
    monkeypatch.setenv("IPAI_EGRESS_ALLOW", "n8n.internal, .corp.example, 10.20.0.0/16, 169.254.0.0/16")
    policy = EgressPolicy.from_environment()
    policy.check_url("http://n8n.internal:5678/webhook/abc")  # a self-hosted receiver, plain HTTP
    policy.check_url("http://odoo.corp.example/jsonrpc")
    policy.check_url("http://10.20.3.4/x")
    policy.check_address("10.20.3.4")
    with pytest.raises(EgressRefused, match="private"):
        policy.check_url("https://10.21.0.1/x")  # outside the listed network
    with pytest.raises(EgressRefused, match="not https"):
        policy.check_url("http://api.example.com/x")  # not listed: the default rules
    with pytest.raises(EgressRefused, match="metadata"):
        policy.check_url("http://169.254.169.254/latest/meta-data")  # listed, and still refused
    with pytest.raises(EgressRefused, match="IPAI_EGRESS_ALLOW"):
        EgressPolicy().check_url("https://10.20.3.4/x")  # the refusal says how an operator allows it


def test_error_table_defaults_and_overrides() -> None:
    exhausted = classify(DEFAULT_RULES, 403, {"x-ratelimit-remaining": "0"}, '{"message":"API rate limit exceeded"}')
    assert exhausted is not None and exhausted.action == "rate_limited"
    forbidden = classify(DEFAULT_RULES, 403, {"x-ratelimit-remaining": "4000"}, '{"message":"Resource not accessible"}')
    assert forbidden is not None and forbidden.action == "fail"
    custom = (ErrorRule(status=(404,), action="ignore"),) + DEFAULT_RULES
    assert classify(custom, 404, {}, "").action == "ignore"  # type: ignore[union-attr]


def test_retry_after_in_seconds_and_http_date() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=1_000_000) == pytest.approx(30.0)


def test_records_keep_nested_values_as_json_and_name_a_bad_declared_value() -> None:
    batch = to_batch([{"id": 1, "user": {"login": "a"}, "labels": []}, {"id": 2, "user": None}], {}, where="u")
    assert batch.schema.field("id").type == pa.int64()
    assert batch.column("user").to_pylist() == ['{"login":"a"}', None]
    with pytest.raises(HttpFailed, match=r"field 'id' of record 1 is \"x\".*declared type int64"):
        to_batch([{"id": 1}, {"id": "x"}], {"id": "int64"}, where="https://api/x")


def test_redactor_masks_secret_and_its_encodings() -> None:
    redact = Redactor.of(["s3cr3t/value"])
    assert redact("url?key=s3cr3t%2Fvalue and s3cr3t/value") == "url?key=*** and ***"


def test_stream_spec_names_a_placeholder_nothing_fills() -> None:
    with pytest.raises(ValueError, match=r"uses \{repo\}, which no partitioner fills"):
        HttpStreamSpec(name="issues", path="/repos/{repo}/issues")


def test_a_paginator_that_does_not_match_fails_at_the_first_page() -> None:
    paginator = NextTokenPaginator(type="next_token", token_path=("meta", "next"), param="cursor", size=2)
    page = Page(PageRequest("https://x/t"), {}, {"data": [{}, {}], "paging": {"next": "b"}}, [{}, {}])
    with pytest.raises(HttpFailed, match=r"full \(2 records\) but has no token at \[meta, next\].*has: data, paging"):
        check_first_page(paginator, page, where="https://x/t")
    offset = OffsetPaginator(type="offset", total_path=("total",))
    with pytest.raises(HttpFailed, match=r"its total is not at \[total\]"):
        check_first_page(offset, Page(PageRequest("https://x/r"), {}, {"rows": [{}], "rowCount": 1}, [{}]), where="u")
    check_first_page(offset, Page(PageRequest("https://x/r"), {}, {"rows": [{}], "total": 1}, [{}]), where="u")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(st.dictionaries(st.sampled_from(["id", "a", "b", "n"]), json_values, max_size=4), max_size=6),
       declared=st.dictionaries(st.sampled_from(["id", "a"]), st.sampled_from(["string", "int64", "float64", "bool",
                                                                               "json"]), max_size=2))
def test_any_json_records_become_a_batch_or_a_named_error(records, declared) -> None:
    """RELIABILITY 16 for bronze: hostile values (huge integers, mixed types, nesting) never crash a reader."""
    try:
        batch = to_batch(records, declared, where="https://api/x")
    except HttpFailed as exc:
        assert "https://api/x" in str(exc) and "declared type" in str(exc)
        return
    # Every record is a row, unless no record has any field at all (then there is nothing to land).
    assert batch.num_rows == (len(records) if batch.num_columns else 0)
    types = {"string": pa.string(), "json": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_()}
    for name, kind in declared.items():
        assert batch.schema.field(name).type == types[kind]


def test_a_body_that_is_not_json_is_a_value_error_and_big_integers_are_json() -> None:
    for body in (b'[{"id": 1}', b'\xff\xfe', b'[NaN]', b''):
        with pytest.raises(ValueError):
            loads(body)
    records = loads(b'[{"id": 18446744073709551616, "n": 1}]')
    batch = to_batch(records, {}, where="u")
    assert batch.column("id").to_pylist() == ["18446744073709551616"] and batch.column("n").to_pylist() == [1]
