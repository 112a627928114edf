"""kms.policy: statements, policies, principals and the allow/deny decision, and its cache."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from functools import cache
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kms.policy import (
    ACTIONS,
    ADMIN,
    Authorizer,
    KeyPolicy,
    Policy,
    PolicyError,
    Principal,
    Request,
    Statement,
    identity_effect,
    is_allowed,
    key_decision,
    parse_principal_arn,
    principal_arn,
)

KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_ID = "0987dcba-09fe-87dc-65ba-ab0987654321"
KEY = f"arn:aws:kms:us-east-1:111122223333:key/{KEY_ID}"
OTHER = f"arn:aws:kms:us-east-1:111122223333:key/{OTHER_ID}"
ALIAS = "arn:aws:kms:us-east-1:111122223333:alias/app-orders"


def principal(*statements: Statement, instance: str = "inst-a", pid: str = "p-1") -> Principal:
    return Principal(pid, "app", instance, (Policy(statements),))


def allow(actions: str | tuple[str, ...], resources: str | tuple[str, ...], **kw: Any) -> Statement:
    a = (actions,) if isinstance(actions, str) else actions
    r = (resources,) if isinstance(resources, str) else resources
    return Statement("Allow", a, r, **kw)


def deny(actions: str | tuple[str, ...], resources: str | tuple[str, ...], **kw: Any) -> Statement:
    a = (actions,) if isinstance(actions, str) else actions
    r = (resources,) if isinstance(resources, str) else resources
    return Statement("Deny", a, r, **kw)


def req(
    action: str = "kms:Encrypt",
    *resources: str,
    instance: str = "inst-a",
    ip: str | None = None,
    ctx: Mapping[str, str] | None = None,
) -> Request:
    return Request(action, resources or (KEY,), instance, ip, ctx or {})


# ------------------------------------------------------------------------------- basic rules


def test_allow_and_default_deny() -> None:
    p = principal(allow("kms:Encrypt", KEY))
    assert is_allowed(p, req("kms:Encrypt", KEY))
    assert not is_allowed(p, req("kms:Decrypt", KEY))  # action not granted
    assert not is_allowed(p, req("kms:Encrypt", OTHER))  # resource not granted
    assert not is_allowed(principal(), req())  # a policy with no statements grants nothing
    assert not is_allowed(Principal("p-0", "none", "inst-a", ()), req())  # no policies at all


def test_explicit_deny_wins_whatever_the_order() -> None:
    a, d = allow("kms:*", "*"), deny("kms:Encrypt", KEY)
    for statements in ((a, d), (d, a)):
        p = principal(*statements)
        assert not is_allowed(p, req("kms:Encrypt", KEY))
        assert is_allowed(p, req("kms:Decrypt", KEY))
        assert is_allowed(p, req("kms:Encrypt", OTHER))
    # across policies too
    split = Principal("p-1", "app", "inst-a", (Policy((a,)), Policy((d,))))
    assert not is_allowed(split, req("kms:Encrypt", KEY))


def test_deny_alone_grants_nothing() -> None:
    assert not is_allowed(principal(deny("kms:Decrypt", "*")), req("kms:Encrypt"))


def test_cross_instance_is_always_denied() -> None:
    admin = Principal("p-root", "root", "inst-a", (ADMIN,))
    assert is_allowed(admin, req("kms:ScheduleKeyDeletion", instance="inst-a"))
    assert not is_allowed(admin, req("kms:ScheduleKeyDeletion", instance="inst-b"))
    assert not is_allowed(admin, req("kms:CreateKey", instance="inst-b"))


def test_admin_allows_every_action() -> None:
    admin = Principal("p-root", "root", "inst-a", (ADMIN,))
    for action in ACTIONS:
        assert is_allowed(admin, Request(action, (KEY,), "inst-a"))
        assert is_allowed(admin, Request(action, (), "inst-a"))


def test_actions_table() -> None:
    assert len([a for a in ACTIONS if a.startswith("kms:")]) == 45
    assert len([a for a in ACTIONS if a.startswith("secretsmanager:")]) == 19
    assert len(ACTIONS) == 45 + 19
    assert {"kms:Encrypt", "kms:ReEncryptTo", "kms:ListKeyPolicies", "kms:RotateKeyOnDemand",
            "secretsmanager:GetSecretValue", "secretsmanager:RotateSecret"} <= ACTIONS


# ----------------------------------------------------------------------------------- actions


def test_wildcard_and_case_insensitive_actions() -> None:
    gen = principal(allow("kms:Generate*", "*"))
    for action in ACTIONS:
        assert is_allowed(gen, Request(action, (KEY,), "inst-a")) == action.startswith(
            "kms:Generate"
        )
    mixed = principal(allow("KMS:encrypt", "*"))
    assert is_allowed(mixed, req("kms:Encrypt"))
    assert is_allowed(mixed, req("kms:ENCRYPT"))
    assert not is_allowed(mixed, req("kms:Decrypt"))
    q = principal(allow("kms:?ncrypt", "*"))
    assert is_allowed(q, req("kms:Encrypt"))
    assert not is_allowed(q, req("kms:Decrypt"))  # '?' is exactly one character
    star = principal(allow("*", "*"))
    assert all(is_allowed(star, Request(a, (KEY,), "inst-a")) for a in ACTIONS)
    suffix = principal(allow("kms:*Key", "*"))
    assert is_allowed(suffix, req("kms:DescribeKey"))
    assert is_allowed(suffix, req("kms:CreateKey"))
    assert not is_allowed(suffix, req("kms:ListKeys"))  # '*Key' must end the name
    assert not is_allowed(suffix, req("kms:Encrypt"))


def test_request_action_is_canonicalised_and_checked() -> None:
    assert Request("KMS:generatedatakey", (KEY,), "i").action == "kms:GenerateDataKey"
    with pytest.raises(ValueError, match="not a known KMS action"):
        Request("kms:Encrpyt", (KEY,), "i")
    with pytest.raises(ValueError, match="not a known KMS action"):
        Request("s3:GetObject", (KEY,), "i")


# --------------------------------------------------------------------------------- resources

_REGIONS = st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2", "cn-north-1"])
_ACCOUNTS = st.from_regex(r"[0-9]{12}", fullmatch=True)
_KEY_IDS = st.uuids().map(str) | st.uuids().map(lambda u: "mrk-" + u.hex)
_ALIAS_NAMES = st.from_regex(r"[A-Za-z0-9_\-]{1,20}(/[A-Za-z0-9_\-]{1,10}){0,2}", fullmatch=True)


@st.composite
def arns(draw: st.DrawFn) -> str:
    partition = draw(st.sampled_from(["aws", "aws-cn", "aws-us-gov"]))
    head = f"arn:{partition}:kms:{draw(_REGIONS)}:{draw(_ACCOUNTS)}:"
    if draw(st.booleans()):
        return head + "key/" + draw(_KEY_IDS)
    return head + "alias/" + draw(_ALIAS_NAMES)


def _tokens(arn: str) -> list[str]:
    """The ARN split into segments and the ':' '/' '-' separators between them."""
    out, cur = [], ""
    for c in arn:
        if c in ":/-":
            out += [cur, c]
            cur = ""
        else:
            cur += c
    return [*out, cur]


def _matches(pattern: str, name: str) -> bool:
    p = principal(allow("kms:Encrypt", pattern))
    return is_allowed(p, Request("kms:Encrypt", (name,), "inst-a"))


@given(arns(), st.data())
def test_arn_with_segments_replaced_by_star_still_matches(arn: str, data: st.DataObject) -> None:
    toks = _tokens(arn)
    idx = data.draw(st.sets(st.sampled_from(range(len(toks))), min_size=1))
    pattern = "".join("*" if i in idx else t for i, t in enumerate(toks))
    assume(pattern.startswith("arn:"))  # the 'arn' segment itself may have become '*'
    assert _matches(pattern, arn)


@given(arns(), st.data())
def test_arn_with_substrings_replaced_by_wildcards_still_matches(
    arn: str, data: st.DataObject
) -> None:
    # Replace a random substring after 'arn:' by '*' and a random character by '?'.
    i = data.draw(st.integers(4, len(arn)))
    j = data.draw(st.integers(i, len(arn)))
    starred = arn[:i] + "*" + arn[j:]
    assert _matches(starred, arn)
    k = data.draw(st.integers(4, len(arn) - 1))
    assume(arn[k] != ":")  # keep the pattern a well-formed ARN pattern
    assert _matches(arn[:k] + "?" + arn[k + 1 :], arn)


@given(arns(), arns())
def test_literal_arn_matches_only_itself(a: str, b: str) -> None:
    assert _matches(a, a)
    assert _matches(a, b) == (a == b)


@given(arns(), st.data())
def test_literal_arn_does_not_match_a_near_miss(arn: str, data: st.DataObject) -> None:
    k = data.draw(st.integers(4, len(arn) - 1))
    c = data.draw(st.sampled_from("aZ09-_/"))
    assume(c != arn[k])
    assert not _matches(arn, arn[:k] + c + arn[k + 1 :])
    assert not _matches(arn, arn + "x")
    assert not _matches(arn, arn[:-1])
    assert not _matches(arn, arn.upper())  # ARNs match case-sensitively


def _reference_glob(pattern: str, text: str) -> bool:
    """Plain dynamic programming over (pattern position, text position)."""

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        c = pattern[i]
        if c == "*":
            return m(i + 1, j) or (j < len(text) and m(i, j + 1))
        return j < len(text) and (c == "?" or c == text[j]) and m(i + 1, j + 1)

    return m(0, 0)


@settings(max_examples=500)
@given(st.text("ab-*?", max_size=12), st.text("ab-", max_size=12))
def test_wildcard_matcher_agrees_with_reference(pattern: str, text: str) -> None:
    prefix = "arn:aws:kms:us-east-1:111122223333:key/"
    assert _matches(prefix + pattern, prefix + text) == _reference_glob(pattern, text)


def test_star_crosses_colons_and_slashes() -> None:
    assert _matches("arn:aws:kms:*", KEY)
    assert _matches("arn:*", ALIAS)
    assert _matches("arn:aws:kms:*:*:*", KEY)
    assert _matches("arn:aws:kms:*:*:key/*", KEY)
    assert not _matches("arn:aws:kms:*:*:key/*", ALIAS)
    assert _matches("arn:aws:kms:*:*:alias/app-*", ALIAS)
    assert not _matches("arn:aws:kms:*:*:alias/app-*", ALIAS.replace("app-", "web-"))
    assert not _matches("arn:aws:kms:eu-*:*:key/*", KEY)
    assert not _matches("arn:aws:kms:*:444455556666:key/*", KEY)


def test_many_stars_do_not_backtrack_exponentially() -> None:
    pattern = "arn:aws:kms:*:*:key/" + "*a" * 25 + "*b"
    text = "arn:aws:kms:r:1:key/" + "a" * 3000
    start = time.perf_counter()
    assert not _matches(pattern, text)
    assert _matches(pattern, text + "b")
    assert time.perf_counter() - start < 2.0


def test_short_resource_forms() -> None:
    by_id = principal(allow("kms:Encrypt", KEY_ID))
    assert is_allowed(by_id, req("kms:Encrypt", KEY))
    assert is_allowed(by_id, req("kms:Encrypt", KEY.replace("us-east-1", "eu-west-1")))
    assert not is_allowed(by_id, req("kms:Encrypt", OTHER))
    assert not is_allowed(by_id, req("kms:Encrypt", KEY + "0"))
    assert is_allowed(principal(allow("kms:Encrypt", "key/" + KEY_ID)), req("kms:Encrypt", KEY))
    prefix = principal(allow("kms:Encrypt", "1234*"))
    assert is_allowed(prefix, req("kms:Encrypt", KEY))
    assert not is_allowed(prefix, req("kms:Encrypt", OTHER))
    by_alias = principal(allow("kms:Encrypt", "alias/app-*"))
    assert is_allowed(by_alias, req("kms:Encrypt", KEY, ALIAS))
    assert not is_allowed(by_alias, req("kms:Encrypt", KEY))
    # a short key id never matches an alias of the same name, nor the reverse
    assert not _matches("app-orders", ALIAS)
    assert not _matches("alias/" + KEY_ID, KEY)
    # the short form does not let a wildcard-free id spill into other fields
    assert not _matches(KEY_ID, f"arn:aws:kms:us-east-1:111122223333:alias/{KEY_ID}")


def test_alias_and_key_arns() -> None:
    via_alias = principal(allow("kms:Decrypt", ALIAS))
    assert is_allowed(via_alias, req("kms:Decrypt", KEY, ALIAS))  # caller named the alias
    assert not is_allowed(via_alias, req("kms:Decrypt", KEY))  # caller named the key itself
    # a Deny on the key ARN also blocks use through any alias
    both = principal(allow("kms:*", "*"), deny("kms:Decrypt", KEY))
    assert not is_allowed(both, req("kms:Decrypt", KEY, ALIAS))
    # and a Deny on an alias blocks use through that alias only
    alias_denied = principal(allow("kms:*", "*"), deny("kms:Decrypt", "alias/app-*"))
    assert not is_allowed(alias_denied, req("kms:Decrypt", KEY, ALIAS))
    assert is_allowed(alias_denied, req("kms:Decrypt", KEY))


def test_account_level_actions_need_star_resource() -> None:
    keys_only = principal(allow("kms:*", "arn:aws:kms:*:*:key/*"))
    assert not is_allowed(keys_only, Request("kms:CreateKey", (), "inst-a"))
    assert is_allowed(keys_only, req("kms:Encrypt", KEY))
    star = principal(allow(("kms:CreateKey", "kms:ListKeys"), "*"))
    assert is_allowed(star, Request("kms:CreateKey", (), "inst-a"))
    assert is_allowed(star, Request("kms:ListKeys", (), "inst-a"))
    assert not is_allowed(star, Request("kms:GenerateRandom", (), "inst-a"))
    assert not is_allowed(
        principal(allow("kms:*", "*"), deny("kms:CreateKey", "*")),
        Request("kms:CreateKey", (), "inst-a"),
    )


# ---------------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    ("cidrs", "ip", "expected"),
    [
        (("10.0.0.0/8",), "10.200.3.4", True),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("192.0.2.0/24", "198.51.100.7/32"), "198.51.100.7", True),
        (("192.0.2.0/24", "198.51.100.7/32"), "198.51.100.8", False),
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("2001:db8::/32",), "2001:db9::5", False),
        (("10.0.0.0/8",), "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 counts as IPv4
        (("::ffff:0:0/96",), "10.1.2.3", False),  # ... so it never matches the v6 form
        (("10.0.0.0/8",), "2001:db8::1", False),  # other family
        (("::/0",), "10.0.0.1", False),
        (("0.0.0.0/0", "::/0"), "2001:db8::1", True),
        (("0.0.0.0/0", "::/0"), None, False),  # Allow without a source IP: no grant
    ],
)
def test_allow_with_source_ip(cidrs: tuple[str, ...], ip: str | None, expected: bool) -> None:
    p = principal(allow("kms:Encrypt", "*", source_cidrs=cidrs))
    assert is_allowed(p, req(ip=ip)) is expected


@pytest.mark.parametrize(
    ("cidrs", "ip", "denied"),
    [
        (("10.0.0.0/8",), "10.9.9.9", True),
        (("10.0.0.0/8",), "172.16.0.1", False),
        (("2001:db8::/32",), "2001:db8::1", True),
        (("2001:db8::/32",), "fe80::1", False),
        (("10.0.0.0/8",), None, True),  # Deny without a source IP: fail closed
    ],
)
def test_deny_with_source_ip(cidrs: tuple[str, ...], ip: str | None, denied: bool) -> None:
    p = principal(allow("kms:*", "*"), deny("kms:*", "*", source_cidrs=cidrs))
    assert is_allowed(p, req(ip=ip)) is not denied


def test_not_ip_address() -> None:
    office = ("203.0.113.0/24", "2001:db8:aa::/48")
    p = principal(allow("kms:*", "*"), deny("kms:*", "*", not_source_cidrs=office))
    assert is_allowed(p, req(ip="203.0.113.9"))
    assert is_allowed(p, req(ip="2001:db8:aa::1"))
    assert not is_allowed(p, req(ip="198.51.100.1"))
    assert not is_allowed(p, req(ip=None))  # fail closed
    grant = principal(allow("kms:*", "*", not_source_cidrs=office))
    assert grant is not None and is_allowed(grant, req(ip="198.51.100.1"))
    assert not is_allowed(grant, req(ip="203.0.113.1"))
    assert not is_allowed(grant, req(ip=None))


def test_bad_source_ip_in_request() -> None:
    for bad in ("10.0.0", "10.0.0.256", "not-an-ip", " 10.0.0.1", "::g", "01.2.3.4"):
        with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
            Request("kms:Encrypt", (KEY,), "i", bad)


# ------------------------------------------------------------------------ encryption context


def test_encryption_context_condition() -> None:
    st_ = allow("kms:Decrypt", "*", encryption_context={"Dept": ("IT", "Ops"), "App": ("web",)})
    p = principal(st_)
    assert is_allowed(p, req("kms:Decrypt", ctx={"Dept": "IT", "App": "web"}))
    assert is_allowed(p, req("kms:Decrypt", ctx={"Dept": "Ops", "App": "web", "X": "1"}))
    assert not is_allowed(p, req("kms:Decrypt", ctx={"Dept": "HR", "App": "web"}))
    assert not is_allowed(p, req("kms:Decrypt", ctx={"Dept": "it", "App": "web"}))  # values: case
    assert not is_allowed(p, req("kms:Decrypt", ctx={"Dept": "IT"}))  # every key required
    assert not is_allowed(p, req("kms:Decrypt"))
    # condition keys are case-insensitive, as in AWS
    assert is_allowed(p, req("kms:Decrypt", ctx={"dept": "IT", "APP": "web"}))
    # keys differing only by case: an Allow needs all of them to match
    assert not is_allowed(p, req("kms:Decrypt", ctx={"Dept": "IT", "DEPT": "HR", "App": "web"}))


def test_encryption_context_deny() -> None:
    p = principal(allow("kms:*", "*"), deny("kms:Decrypt", "*", encryption_context={"t": ("x",)}))
    assert not is_allowed(p, req("kms:Decrypt", ctx={"t": "x"}))
    assert not is_allowed(p, req("kms:Decrypt", ctx={"T": "y", "t": "x"}))  # any variant hits
    assert is_allowed(p, req("kms:Decrypt", ctx={"t": "y"}))
    assert is_allowed(p, req("kms:Decrypt"))  # no such key: the condition is false


def test_encryption_context_from_json() -> None:
    pol = Policy.from_json(
        {
            "Statement": {
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:EncryptionContext:Dept": ["IT", "Ops"]}},
            }
        }
    )
    assert pol.statements[0].encryption_context == {"Dept": ("IT", "Ops")}
    p = Principal("p", "n", "i", (pol,))
    assert is_allowed(p, Request("kms:Decrypt", (KEY,), "i", encryption_context={"Dept": "Ops"}))
    assert not is_allowed(p, Request("kms:Decrypt", (KEY,), "i", encryption_context={"D": "x"}))


# ------------------------------------------------------------------------------------- JSON

FULL = {
    "Version": "2012-10-17",
    "Id": "key-policy-1",
    "Statement": [
        {
            "Sid": "Use",
            "Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": ["arn:aws:kms:*:111122223333:key/*", "alias/app-*"],
            "Condition": {
                "IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]},
                "StringEquals": {"kms:EncryptionContext:app": "orders"},
            },
        },
        {
            "Effect": "Deny",
            "Action": "kms:*",
            "Resource": "*",
            "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
        },
    ],
}


def test_from_json_reads_aws_documents() -> None:
    for doc in (FULL, json.dumps(FULL), json.dumps(FULL).encode()):
        pol = Policy.from_json(doc)
        use, guard = pol.statements
        assert use.sid == "Use" and guard.sid is None
        assert use.actions == ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*")
        assert use.resources == ("arn:aws:kms:*:111122223333:key/*", "alias/app-*")
        assert use.source_cidrs == ("10.0.0.0/8", "2001:db8::/32")
        assert use.encryption_context == {"app": ("orders",)}
        assert guard.effect == "Deny" and guard.not_source_cidrs == ("10.0.0.0/8",)
        p = Principal("p", "n", "inst-a", (pol,))
        ok = req("kms:GenerateDataKeyPair", KEY, ip="10.0.0.1", ctx={"app": "orders"})
        assert is_allowed(p, ok)
        assert not is_allowed(p, req("kms:Encrypt", KEY, ip="172.16.0.1", ctx={"app": "orders"}))
    assert Policy.from_json('{"Statement": []}') == Policy(())
    assert Policy.from_json('{"Statement": []}').version == "2012-10-17"


def test_json_round_trip_of_examples() -> None:
    for pol in (ADMIN, Policy.from_json(FULL), Policy((), version="2008-10-17")):
        text = pol.to_json()
        assert Policy.from_json(text) == pol
        assert json.loads(text)["Version"] == pol.version


_ACTION_PATTERNS = st.sampled_from(
    sorted(ACTIONS) + ["kms:*", "*", "kms:Generate*", "kms:*Key", "kms:Re?ncrypt*", "KMS:sign"]
)
_RESOURCE_PATTERNS = st.sampled_from(
    [
        "*",
        KEY,
        OTHER,
        ALIAS,
        KEY_ID,
        "key/" + OTHER_ID,
        "alias/app-*",
        "arn:aws:kms:*:*:key/*",
        "arn:aws:kms:us-east-1:111122223333:*",
        "arn:aws:kms:*:*:alias/*",
        "arn:aws:kms:eu-*:*:key/*",
        "1234*",
    ]
)
_CIDRS = st.sampled_from(
    ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0", "::/0"]
)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)


@st.composite
def statements(draw: st.DrawFn, with_context: bool = True) -> Statement:
    ctx: dict[str, tuple[str, ...]] = {}
    if with_context and draw(st.integers(0, 3)) == 0:
        keys = draw(st.lists(st.sampled_from(["app", "dept", "tier"]), max_size=2, unique=True))
        values = st.lists(st.sampled_from("xyz"), min_size=1, max_size=2)
        ctx = {k: tuple(draw(values)) for k in keys}
    return Statement(
        effect=draw(st.sampled_from(["Allow", "Allow", "Deny"])),
        actions=tuple(draw(st.lists(_ACTION_PATTERNS, min_size=1, max_size=3))),
        resources=tuple(draw(st.lists(_RESOURCE_PATTERNS, min_size=1, max_size=3))),
        source_cidrs=tuple(draw(st.lists(_CIDRS, max_size=2)))
        if draw(st.integers(0, 3)) == 0
        else (),
        not_source_cidrs=tuple(draw(st.lists(_CIDRS, max_size=2)))
        if draw(st.integers(0, 5)) == 0
        else (),
        encryption_context=ctx,
        sid=draw(st.none() | _TEXT),
    )


def policies(with_context: bool = True) -> st.SearchStrategy[Policy]:
    return st.builds(
        Policy,
        st.lists(statements(with_context), max_size=4).map(tuple),
        st.sampled_from(["2012-10-17", "2008-10-17"]),
    )


@given(policies())
def test_json_round_trip(pol: Policy) -> None:
    assert Policy.from_json(pol.to_json()) == pol
    assert Policy.from_json(pol.to_obj()) == pol


_IPS = st.sampled_from(
    [None, "10.1.2.3", "10.200.0.1", "192.0.2.9", "8.8.8.8", "2001:db8::7", "fe80::1"]
    + ["::ffff:10.1.2.3"]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    action = draw(st.sampled_from(sorted(ACTIONS)))
    names = draw(
        st.sampled_from(
            [(KEY,), (OTHER,), (KEY, ALIAS), (), (KEY.replace("us-east-1", "eu-west-1"),)]
        )
    )
    ctx = draw(st.dictionaries(st.sampled_from(["app", "dept", "App"]), st.sampled_from("xyz")))
    instance = draw(st.sampled_from(["inst-a", "inst-a", "inst-b"]))
    return Request(action, names, instance, draw(_IPS), ctx)


@given(st.lists(policies(), max_size=3), requests(), st.randoms(use_true_random=False))
def test_decision_ignores_order(pols: list[Policy], r: Request, rnd: random.Random) -> None:
    p = Principal("p", "n", "inst-a", tuple(pols))
    flat = [s for pol in pols for s in pol.statements]
    rnd.shuffle(flat)
    shuffled = Principal("p", "n", "inst-a", (Policy(tuple(flat)),))
    assert is_allowed(p, r) == is_allowed(shuffled, r)


@given(st.lists(policies(), max_size=3), requests())
def test_decision_matches_definition(pols: list[Policy], r: Request) -> None:
    """is_allowed == same instance and (no applicable Deny) and (some applicable Allow)."""
    p = Principal("p", "n", "inst-a", tuple(pols))
    applicable = [s for pol in pols for s in pol.statements if s.applies(r)]
    expected = (
        r.instance == "inst-a"
        and all(s.effect == "Allow" for s in applicable)
        and any(s.effect == "Allow" for s in applicable)
    )
    assert is_allowed(p, r) == expected
    # adding an unconditional Deny on everything refuses everything
    locked = Principal("p", "n", "inst-a", (*pols, Policy((deny("*", "*"),))))
    assert not is_allowed(locked, r)
    # and ADMIN in another instance grants nothing here
    assert not is_allowed(Principal("q", "n", "inst-c", (*pols, ADMIN)), r)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"Version": "2012-10-17"}', "missing Statement"),
        ('{"Statement": [], "Extra": 1}', "unknown element 'Extra'"),
        ('{"Version": "2020-01-01", "Statement": []}', "Version '2020-01-01'"),
        ('{"Version": 2012, "Statement": []}', "Version 2012"),
        ('{"Statement": "Allow"}', "Statement must be an object or a list"),
        ('{"Statement": ["Allow"]}', r"Statement\[0\]: must be an object"),
        ('{"Statement": [{"Action": "kms:Encrypt", "Resource": "*"}]}', "missing Effect"),
        ('{"Statement": [{"Effect": "Allow", "Resource": "*"}]}', "missing Action"),
        ('{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt"}]}', "missing Resource"),
        (
            '{"Statement": [{"Effect": "allow", "Action": "kms:Encrypt", "Resource": "*"}]}',
            "Effect 'allow' must be 'Allow' or 'Deny'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrpyt", "Resource": "*"}]}',
            r"Statement\[0\]: Action 'kms:Encrpyt' matches no KMS or Secrets Manager action "
            r"\(did you mean 'kms:Encrypt'\?\)",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
            "Action 's3:\\*' matches no KMS or Secrets Manager action",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": 5, "Resource": "*"}]}',
            "Action must be a string or a list of strings, not int",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}',
            "Action must not be an empty list",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", 1], "Resource": "*"}]}',
            "Action: 1 is not a string",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": {"a": 1}}]}',
            "Resource must be a string or a list of strings, not dict",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Principal": {"AWS": "*"}}]}',
            "Principal is not supported",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "NotAction": "kms:Encrypt", "Resource": "*"}]}',
            "NotAction is not supported",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Effects": "x"}]}',
            "unknown element 'Effects'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Effect": "Deny", "Action": "kms:Encrypt",'
            ' "Resource": "*"}]}',
            "duplicate key 'Effect'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}}]}',
            "'10.0.0.0/33' is not a valid CIDR",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.1/8"}}}]}',
            "'10.0.0.1/8' is not a valid CIDR .*host bits set",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"IpAddress": {"aws:SourceIp": "banana"}}}]}',
            "'banana' is not a valid CIDR",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"StringLike": {"kms:EncryptionContext:a": "x*"}}}]}',
            "Condition operator 'StringLike' is not supported",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"StringEquals": {"kms:ViaService": "s3.amazonaws.com"}}}]}',
            "unsupported condition key 'kms:ViaService'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"StringEquals": {"kms:EncryptionContext:": "x"}}}]}',
            "unsupported condition key",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"IpAddress": {"aws:SourceVpc": "vpc-1"}}}]}',
            "unsupported condition key 'aws:SourceVpc'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"StringEquals": {"kms:EncryptionContext:a": 1}}}]}',
            "must be a string or a list of strings, not int",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": []}]}',
            "Condition must be an object, not list",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",'
            ' "Condition": {"IpAddress": {}}}]}',
            "must be a non-empty object",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",'
            ' "Resource": "arn:aws:s3:::bucket/*"}]}',
            "names service 's3', not 'kms'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",'
            ' "Resource": "arn:aws:kms:us-east-1:111122223333:kye/1"}]}',
            "resource type 'kye' is neither 'key' nor 'alias'",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",'
            ' "Resource": "arn:aws:kms:us-east-1:key/1"}]}',
            "is not a KMS ARN",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",'
            ' "Resource": "kms:Encrypt"}]}',
            "is neither '\\*', an ARN",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "keys/1"}]}',
            "a short form must be",
        ),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": ""}]}',
            "Resource '' must be a non-empty string",
        ),
        (
            '{"Statement": [{"Sid": 3, "Effect": "Allow", "Action": "kms:Encrypt",'
            ' "Resource": "*"}]}',
            "Sid 3 must be a string",
        ),
    ],
)
def test_malformed_policies(doc: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_json(doc)


def test_policy_error_is_a_value_error_and_names_the_statement() -> None:
    good = {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}
    bad = {"Effect": "Allow", "Action": "kms:Decrytp", "Resource": "*"}
    with pytest.raises(ValueError, match=r"Statement\[2\]: .*did you mean 'kms:Decrypt'"):
        Policy.from_json({"Statement": [good, good, bad]})


def test_direct_construction_is_checked() -> None:
    with pytest.raises(PolicyError, match="Effect 'Maybe'"):
        Statement("Maybe", ("kms:Encrypt",), ("*",))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="Action must be a tuple of strings, not str"):
        Statement("Allow", "kms:Encrypt", ("*",))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="Action must be a tuple of strings, not list"):
        Statement("Allow", ["kms:Encrypt"], ("*",))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="Resource must not be empty"):
        Statement("Allow", ("kms:Encrypt",), ())
    with pytest.raises(PolicyError, match="not a valid CIDR"):
        Statement("Allow", ("kms:Encrypt",), ("*",), source_cidrs=("300.0.0.0/8",))
    with pytest.raises(PolicyError, match="must be a tuple of CIDR strings"):
        Statement("Allow", ("kms:Encrypt",), ("*",), source_cidrs="10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="given twice"):
        Statement("Allow", ("kms:Encrypt",), ("*",), encryption_context={"a": ("x",), "A": ("y",)})
    with pytest.raises(PolicyError, match="must not be empty"):
        Statement("Allow", ("kms:Encrypt",), ("*",), encryption_context={"a": ()})
    with pytest.raises(PolicyError, match="Version"):
        Policy((), version="2024-01-01")
    with pytest.raises(PolicyError, match="not a Statement"):
        Policy(("x",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Principal.instance"):
        Principal("p", "n", "", ())
    with pytest.raises(ValueError, match="tuple of Policy"):
        Principal("p", "n", "i", [ADMIN])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a resource name"):
        Request("kms:Encrypt", ("",), "i")


def test_documents_are_immutable_and_hashable() -> None:
    s = allow("kms:Encrypt", "*", encryption_context={"a": ("x",)})
    with pytest.raises(AttributeError):
        s.effect = "Deny"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.encryption_context["b"] = ("y",)  # type: ignore[index]
    ctx = {"a": "x"}
    r = Request("kms:Encrypt", (KEY,), "i", encryption_context=ctx)
    ctx["a"] = "changed"
    assert r.encryption_context == {"a": "x"}
    twin = allow("kms:Encrypt", "*", encryption_context={"a": ("x",)})
    assert hash(Policy((s,))) == hash(Policy((twin,)))
    assert len({ADMIN, Policy.from_json(ADMIN.to_json())}) == 1


# -------------------------------------------------------------------------------- Authorizer


@settings(max_examples=200)
@given(
    st.lists(st.lists(policies(), max_size=2), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2), requests()), min_size=1, max_size=40),
    st.integers(1, 8),
)
def test_authorizer_agrees_with_is_allowed(
    policy_sets: list[list[Policy]], calls: list[tuple[int, Request]], max_entries: int
) -> None:
    principals = [
        Principal(f"p-{i}", "n", "inst-a" if i % 2 == 0 else "inst-b", tuple(pols))
        for i, pols in enumerate(policy_sets)
    ]
    auth = Authorizer(max_entries=max_entries)
    for idx, r in calls + calls:  # the second pass hits the cache
        p = principals[idx % len(principals)]
        assert auth.check(p, r) == is_allowed(p, r)
        assert len(auth) <= max_entries


def test_authorizer_caches_and_invalidate_applies_new_policy() -> None:
    auth = Authorizer()
    r = req("kms:Encrypt", KEY, ip="10.0.0.1")
    old = principal(allow("kms:Encrypt", "*"))
    assert auth.check(old, r)
    assert len(auth) == 1
    new = principal(deny("kms:Encrypt", "*"))  # same id, policy changed
    assert auth.check(new, r)  # the cached decision, until invalidated
    generation = auth.generation
    auth.invalidate()
    assert auth.generation == generation + 1
    assert len(auth) == 0
    assert not auth.check(new, r)
    # and the other way round
    auth.invalidate()
    assert auth.check(old, r)


def test_authorizer_key_covers_every_request_field() -> None:
    auth = Authorizer()
    p = principal(allow("kms:Encrypt", KEY, source_cidrs=("10.0.0.0/8",)))
    variants = [
        (req("kms:Encrypt", KEY, ip="10.0.0.1"), True),
        (req("kms:Decrypt", KEY, ip="10.0.0.1"), False),
        (req("kms:Encrypt", OTHER, ip="10.0.0.1"), False),
        (req("kms:Encrypt", KEY, ip="11.0.0.1"), False),
        (req("kms:Encrypt", KEY), False),
        (req("kms:Encrypt", KEY, ip="10.0.0.1", instance="inst-b"), False),
        (req("kms:Encrypt", OTHER, KEY, ip="10.0.0.1"), True),
    ]
    for _ in range(2):
        for r, expected in variants:
            assert auth.check(p, r) is expected
    other = principal(allow("kms:*", "*"), pid="p-2")
    assert all(auth.check(other, r) for r, _ in variants[:5])


def test_authorizer_does_not_cache_context_dependent_principals() -> None:
    auth = Authorizer()
    p = principal(allow("kms:Decrypt", "*", encryption_context={"app": ("x",)}))
    assert auth.check(p, req("kms:Decrypt", ctx={"app": "x"}))
    assert not auth.check(p, req("kms:Decrypt", ctx={"app": "y"}))
    assert len(auth) == 0


def test_authorizer_is_bounded() -> None:
    auth = Authorizer(max_entries=10)
    p = principal(allow("kms:*", "*"))
    for i in range(100):
        assert auth.check(p, req(ip=f"10.0.0.{i}"))
        assert 1 <= len(auth) <= 10
    with pytest.raises(ValueError):
        Authorizer(max_entries=0)


def test_authorizer_drops_a_decision_computed_across_invalidate() -> None:
    auth = Authorizer()

    class Tripwire(str):
        """An instance name whose comparison invalidates the cache mid-check, once."""

        armed = True

        def __ne__(self, other: object) -> bool:
            if Tripwire.armed:
                Tripwire.armed = False
                auth.invalidate()
            return str.__ne__(self, other)

        __hash__ = str.__hash__

    p = Principal("p-1", "app", Tripwire("inst-a"), (Policy((allow("kms:*", "*"),)),))
    assert auth.check(p, req())
    assert not Tripwire.armed and auth.generation == 1
    assert len(auth) == 0  # computed across the invalidation: not stored
    assert auth.check(p, req())
    assert len(auth) == 1


# ---------------------------------------------------------------- principal ARNs, key policies

ACCOUNT = "111122223333"
ME = f"arn:aws:iam::{ACCOUNT}:user/app"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def test_principal_arns() -> None:
    assert principal_arn(ACCOUNT, "app") == ME
    assert parse_principal_arn(ME) == (ACCOUNT, "app")
    assert parse_principal_arn(ROOT) == (ACCOUNT, None)
    assert parse_principal_arn("arn:aws-cn:iam::111122223333:user/a/b") == (ACCOUNT, "a/b")
    for bad in ("app", "arn:aws:iam::1234:user/x", f"arn:aws:iam::{ACCOUNT}:role/r",
                f"arn:aws:iam::{ACCOUNT}:user/", f"arn:aws:sts::{ACCOUNT}:user/x", 7):
        with pytest.raises(PolicyError):
            parse_principal_arn(bad)


def key_policy(*statements: dict[str, Any]) -> KeyPolicy:
    return KeyPolicy.from_json({"Version": "2012-10-17", "Statement": list(statements)})


def kst(effect: str, principal: Any, action: str = "kms:*", **extra: Any) -> dict[str, Any]:
    return {"Effect": effect, "Principal": principal, "Action": action, "Resource": "*",
            **extra}


@pytest.mark.parametrize(("principal", "expected"), [
    ("*", "Allow"), ({"AWS": "*"}, "Allow"), ({"AWS": ME}, "Allow"), ({"AWS": [ROOT]}, "Identity"),
    ({"AWS": ACCOUNT}, "Identity"), ({"AWS": "arn:aws:iam::999999999999:user/app"}, None),
    ({"AWS": f"arn:aws:iam::{ACCOUNT}:user/other"}, None),
    ({"AWS": "arn:aws:iam::999999999999:root"}, None),
])
def test_key_policy_allow_principals(principal: Any, expected: str | None) -> None:
    assert key_policy(kst("Allow", principal)).evaluate(req(), ACCOUNT, "app") == expected


@pytest.mark.parametrize("principal", ["*", {"AWS": ME}, {"AWS": ROOT}, {"AWS": ACCOUNT}])
def test_key_policy_deny_for_it_everyone_or_its_account_wins(principal: Any) -> None:
    kp = key_policy(kst("Allow", {"AWS": ME}), kst("Deny", principal, "kms:Encrypt"))
    assert kp.evaluate(req(), ACCOUNT, "app") == "Deny"
    assert kp.evaluate(req("kms:Decrypt"), ACCOUNT, "app") == "Allow"


def test_key_policy_statements_match_actions_resources_and_conditions() -> None:
    kp = key_policy({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
                     "Resource": "arn:aws:kms:*:*:alias/app-*",
                     "Condition": {"StringEquals": {"kms:EncryptionContext:t": "blue"}}})
    assert kp.evaluate(req("kms:Decrypt", KEY, ALIAS, ctx={"t": "blue"}), ACCOUNT, "app") \
        == "Allow"
    for r in (req("kms:Decrypt", KEY, ctx={"t": "blue"}),
              req("kms:Decrypt", KEY, ALIAS, ctx={"t": "red"}),
              req("kms:Encrypt", KEY, ALIAS, ctx={"t": "blue"})):
        assert kp.evaluate(r, ACCOUNT, "app") is None


# (identity effect, key policy effect for the caller) -> decision
_DECISIONS = {
    ("Deny", "Allow"): "Deny", ("Deny", None): "Deny", ("Allow", "Deny"): "Deny",
    ("Allow", "Identity"): "Allow", (None, "Identity"): None, (None, "Allow"): "Allow",
    ("Allow", None): None, (None, None): None, ("Allow", "Allow"): "Allow",
}


@pytest.mark.parametrize(("identity", "kp_effect"), sorted(_DECISIONS, key=str))
def test_key_decision_table(identity: str | None, kp_effect: str | None) -> None:
    statements = {"Allow": [kst("Allow", {"AWS": ME})], "Deny": [kst("Deny", "*")],
                  "Identity": [kst("Allow", {"AWS": ROOT})], None: []}[kp_effect]
    kp = KeyPolicy.from_json({"Statement": statements}) if statements else KeyPolicy(())
    assert kp.evaluate(req(), ACCOUNT, "app") == kp_effect
    got = key_decision(identity, kp, req(), ACCOUNT, "app")  # type: ignore[arg-type]
    assert got == _DECISIONS[(identity, kp_effect)]


def test_no_key_policy_means_the_principal_policy_decides() -> None:
    for identity in ("Allow", "Deny", None):
        assert key_decision(identity, None, req(), ACCOUNT, "app") == identity  # type: ignore


@pytest.mark.parametrize(("doc", "message"), [
    ({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]},
     "missing Principal"),
    ({"Statement": [kst("Allow", {"Service": "x.amazonaws.com"})]}, "only AWS principals"),
    ({"Statement": [kst("Allow", {"AWS": f"arn:aws:iam::{ACCOUNT}:role/r"})]}, "neither"),
    ({"Statement": [kst("Allow", {"AWS": []})]}, "empty"),
    ({"Statement": [kst("Allow", "everyone")]}, "Principal must be"),
    ({"Statement": [{**kst("Allow", "*"), "NotPrincipal": {"AWS": "*"}}]}, "NotPrincipal"),
    ({"Statement": [kst("Allow", "*", "kms:Nope")]}, "matches no KMS or Secrets Manager action"),
])
def test_malformed_key_policies(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        KeyPolicy.from_json(json.dumps(doc))


def test_identity_policies_still_refuse_principal() -> None:
    with pytest.raises(PolicyError, match="Principal is not supported"):
        Policy.from_json(json.dumps({"Statement": [kst("Allow", "*")]}))


def test_identity_effect_and_cached_effect() -> None:
    p = principal(allow("kms:Encrypt", KEY), deny("kms:Decrypt", "*"))
    authz = Authorizer()
    for r, expected in ((req(), "Allow"), (req("kms:Decrypt"), "Deny"),
                        (req("kms:Sign"), None), (req(instance="inst-b"), "Deny")):
        assert identity_effect(p, r) == expected
        assert authz.effect(p, r) == expected == authz.effect(p, r)
        assert authz.check(p, r) is (expected == "Allow")
