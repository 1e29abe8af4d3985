"""Hypothesis-made malformed provider answers (issue 7.7): each adapter's list and create either
raise a one-line ``ProviderError`` without a secret or return well-formed proxies, never another
exception, and a list answer they could not read is never an empty list."""

from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy
from cloudproxy_cli.core.ports import Provider
from tests.standins import aws, digitalocean, gcp, hetzner, vultr
from tests.standins.base import FaultyStandIn, Kind
from tests.standins.http import Failure

# A few dozen examples per property and provider keeps the whole module near 10 s on 2 cores;
# CLOUDPROXY_FUZZ_EXAMPLES=500 digs deeper.
FUZZ = settings(
    max_examples=int(os.environ.get("CLOUDPROXY_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

Path_ = tuple[str | int, ...]


@dataclass
class Target:
    """One adapter against its stand-in, with valid answers to mutate."""

    name: str
    standin: FaultyStandIn
    provider: Provider
    list_answer: Any  # JSON (or, for EC2, XML bytes) of a list naming one VM of ours
    create_answer: Any
    container: str  # the key (or XML element) of the list
    # Item fields whose change may rightly make the VM not ours (or not listed): then an empty
    # list is a correct answer.
    visibility: frozenset[str]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _digitalocean() -> Target:
    standin = digitalocean.DigitalOceanStandIn()
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all()
    auth = _bearer(standin.tokens[0])
    listed = requests.get(standin.endpoint + "droplets", headers=auth, timeout=5).json()
    body = {"name": "x", "size": "s", "image": "i", "tags": ["cloudproxy", "cloudproxy-default"]}
    created = requests.post(standin.endpoint + "droplets", json=body, headers=auth, timeout=5)
    return Target("digitalocean", standin, provider, listed, created.json(), "droplets",
                  frozenset({"tags"}))  # fmt: skip


def _vultr() -> Target:
    standin = vultr.VultrStandIn()
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all()
    auth = _bearer(standin.tokens[0])
    listed = requests.get(standin.endpoint + "/instances", headers=auth, timeout=5).json()
    body = {"region": "ewr", "plan": "p", "os_id": 1, "tags": ["cloudproxy", "cloudproxy-default"]}
    created = requests.post(standin.endpoint + "/instances", json=body, headers=auth, timeout=5)
    return Target("vultr", standin, provider, listed, created.json(), "instances",
                  frozenset({"tags"}))  # fmt: skip


def _hetzner() -> Target:
    standin = hetzner.HetznerStandIn()
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all()
    auth = _bearer(standin.token)
    listed = requests.get(standin.endpoint + "/servers", headers=auth, timeout=5).json()
    body = {"name": "fuzz-1", "server_type": "cx23", "image": "ubuntu-24.04",
            "labels": {"cloudproxy": "true", "cloudproxy-instance": "default"}}  # fmt: skip
    created = requests.post(standin.endpoint + "/servers", json=body, headers=auth, timeout=5)
    return Target("hetzner", standin, provider, listed, created.json(), "servers",
                  frozenset({"labels", "status"}))  # fmt: skip


def _gcp(tmp: Path) -> Target:
    standin = gcp.GcpStandIn(tmp)
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all()
    listed = standin._list(project="proj-default", zone=gcp.ZONE, query={})
    (operation,) = [op for op in standin.operations.values() if op["operationType"] == "insert"]
    return Target("gcp", standin, provider, copy.deepcopy(listed), copy.deepcopy(operation),
                  "items", frozenset({"labels"}))  # fmt: skip


def _aws() -> Target:
    standin = aws.AwsStandIn()
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all()
    provider.list_proxies()
    return Target("aws", standin, provider, standin.answers["DescribeInstances"],
                  standin.answers["RunInstances"], "reservationSet",
                  frozenset({"reservationSet", "tagSet", "instanceState", "item", "key", "value",
                             "name", "code"}))  # fmt: skip


@pytest.fixture(scope="module", params=["digitalocean", "vultr", "hetzner", "gcp", "aws"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    makers: dict[str, Callable[[], Target]] = {
        "digitalocean": _digitalocean, "vultr": _vultr, "hetzner": _hetzner,
        "gcp": lambda: _gcp(tmp_path_factory.mktemp("gcp")), "aws": _aws,
    }  # fmt: skip
    made = makers[str(request.param)]()
    try:
        yield made
    finally:
        made.standin.close()


# --- what to send ---------------------------------------------------------------------------

BAD_DATES = ["", "yesterday", "2026-13-45T99:99:99Z", "2026-01-01T00:00:00+25:00", "0", "-1"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(BAD_DATES)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
not_json = st.one_of(
    st.binary(max_size=40).filter(lambda b: not _is_json(b)),
    st.sampled_from([b"<html><body>502 Bad Gateway</body></html>", b"", b"{", b"\xff\xfe", b"nul"]),
)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _mutate(value: Any, path: Path_, new: Any, *, delete: bool) -> Any:
    if not path:
        return new
    copied = copy.deepcopy(value)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copied


# --- the property ---------------------------------------------------------------------------


def _check(target: Target, kind: Kind, answer: Failure, *, may_be_empty: bool) -> None:
    standin = target.standin
    standin.failures.clear()
    standin.failures.add(kind, answer, times=4)  # every attempt of the retry budget
    try:
        if kind == "list":
            result: list[Proxy] | Proxy = target.provider.list_proxies()
        else:
            result = target.provider.create_proxy()
    except ProviderError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        assert message.startswith(f"{target.name}/default: "), message
        for secret in standin.secrets:
            assert not secret or secret not in message, message
        return
    finally:
        standin.failures.clear()
    proxies = result if isinstance(result, list) else [result]
    for proxy in proxies:
        assert isinstance(proxy, Proxy)
        assert isinstance(proxy.id, str) and proxy.id
        assert proxy.created_at.utcoffset() == timedelta(0)
        assert proxy.ip is None or isinstance(proxy.ip, str)
    if kind == "list" and not may_be_empty:
        assert proxies, "an answer the adapter could not read became an empty list"


@FUZZ
@given(body=not_json)
def test_a_list_that_is_not_json_is_an_error(target: Target, body: bytes) -> None:
    if target.name == "aws":
        body = body.replace(b"<", b"&")  # not XML either
    _check(target, "list", Failure.malformed(body), may_be_empty=False)


@FUZZ
@given(data=st.data())
def test_a_list_of_the_wrong_shape_is_an_error(target: Target, data: st.DataObject) -> None:
    if target.name == "aws":
        body = data.draw(_xml_garbage())
    else:
        top = data.draw(values.filter(lambda v: not isinstance(v, dict)) | st.dictionaries(
            st.text(max_size=6).filter(lambda k: k not in {target.container, "kind"}), values,
            max_size=3,
        ))  # fmt: skip
        body = json.dumps(top).encode()
    _check(target, "list", Failure.malformed(body), may_be_empty=False)


@FUZZ
@given(data=st.data())
def test_a_mutated_list_answer_is_read_or_refused(target: Target, data: st.DataObject) -> None:
    body, touched, mutated = data.draw(_mutation(target, target.list_answer))
    if _lists_nothing(mutated, target):
        touched.add("<empty>")
    # Our VM may rightly drop out when its marks changed, or when the answer is a well-formed
    # empty list (its item removed, its list replaced by an empty one).
    may_be_empty = bool(touched & (target.visibility | {"<empty>"}))
    _check(target, "list", Failure.malformed(body), may_be_empty=may_be_empty)


@FUZZ
@given(data=st.data())
def test_a_mutated_create_answer_is_read_or_refused(target: Target, data: st.DataObject) -> None:
    body, _, _ = data.draw(_mutation(target, target.create_answer))
    _check(target, "create", Failure.malformed(body, status=202), may_be_empty=True)


@st.composite
def _mutation(draw: st.DrawFn, target: Target, template: Any) -> tuple[bytes, set[str], Any]:
    """``template`` with one field replaced (by anything, a huge list included) or removed: the
    body to send, the names of the fields touched, and the mutated answer (``None`` for XML)."""
    if target.name == "aws":
        body, touched = draw(_xml_mutation(template))
        return body, touched, None
    path = draw(st.sampled_from(list(_paths(template))))
    delete = bool(path) and draw(st.booleans())
    mutated = _mutate(template, path, draw(values | st.just([None] * 2000)), delete=delete)
    return json.dumps(mutated).encode(), {str(step) for step in path}, mutated


@FUZZ
@given(body=not_json)
def test_a_create_answer_that_is_not_json_is_an_error(target: Target, body: bytes) -> None:
    _check(target, "create", Failure.malformed(body, status=202), may_be_empty=True)


def _lists_nothing(answer: Any, target: Target) -> bool:
    """Whether ``answer`` is a well-formed list of no VMs (Compute Engine omits an empty
    ``items``, but always names its ``kind``)."""
    if not isinstance(answer, dict):
        return False
    if target.name == "gcp":  # proto JSON: a null list is an empty one
        return answer.get("kind") == "compute#instanceList" and not answer.get(target.container)
    return answer.get(target.container) == []


# --- EC2's XML -------------------------------------------------------------------------------


@st.composite
def _xml_garbage(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(["Response", "DescribeInstancesResponse", "Foo", "reservationSet"]))
    child = draw(st.sampled_from(["", "<item/>", "<requestId>x</requestId>", "<Errors/>"]))
    return f'<?xml version="1.0"?><{tag}>{child}</{tag}>'.encode()


@st.composite
def _xml_mutation(draw: st.DrawFn, raw: bytes) -> tuple[bytes, set[str]]:
    root = ET.fromstring(raw)
    elements = [(root, None)] + [(child, parent) for parent in root.iter() for child in parent]
    element, parent = draw(st.sampled_from(elements))
    action = draw(st.sampled_from(["remove", "text", "duplicate", "clear"]))
    if action == "remove" and parent is not None:
        parent.remove(element)
    elif action == "text":
        element.text = draw(st.text(max_size=12) | st.sampled_from(BAD_DATES))
    elif action == "duplicate" and parent is not None:
        parent.append(copy.deepcopy(element))
    else:
        element.clear()
    touched = {element.tag.rsplit("}", 1)[-1]}
    touched |= {e.tag.rsplit("}", 1)[-1] for e in element.iter()}
    return ET.tostring(root), touched
