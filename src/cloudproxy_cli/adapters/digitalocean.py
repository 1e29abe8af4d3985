"""DigitalOcean droplets through python-digitalocean, one token and endpoint per instance."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests

from cloudproxy_cli.adapters.common import (
    OPEN_IPV4,
    OPEN_IPV6,
    TAG,
    Envelope,
    FirewallRules,
    Grant,
    HttpError,
    ProxySettings,
    canonical_cidr,
    firewall_name,
    guarded_delete,
    instance_tag,
    owns_tags,
    paginate,
    port_range,
    utc_datetime,
    vm_name,
)
from cloudproxy_cli.adapters.rest import TIMEOUT_S, Named, RestCalls, http_error
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

PROVIDER = "digitalocean"
DEFAULT_ENDPOINT = "https://api.digitalocean.com/v2/"
# python-digitalocean's own variable: it reads it when each API object is made.
ENDPOINT_ENV = "DIGITALOCEAN_END_POINT"
PAGE_SIZE = 200  # the API's maximum: one page for any sane pool
# Created only if missing, and DigitalOcean may answer either for a tag that exists.
_TAG_EXISTS = frozenset({409, 422})
_ALL_PORTS = "1-65535"
_FIREWALL_ID = re.compile(r"[0-9a-fA-F-]{1,64}")  # a UUID


def _response_of(tb: TracebackType | None) -> requests.Response | None:
    """The HTTP response a python-digitalocean error came from, if there was one.

    The library turns an error answer into ``DataReadError(message)`` (or ``JSONReadError``,
    or an ``IndexError`` when the body lacks an ``id``): status and headers are gone. A
    session hook cannot see them either, since POSTs go through the module-level
    ``requests.post``, outside the object's session. The response is still the ``req`` local
    of the library's ``get_data`` frame, which the traceback keeps.
    """
    found = None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("req")
        if isinstance(candidate, requests.Response):
            found = candidate
        tb = tb.tb_next
    return found


class DigitalOceanProvider:
    """One DigitalOcean account (API token) and instance name; implements ``Provider``.

    Every droplet it creates carries the tags ``cloudproxy`` and ``cloudproxy-<instance>``
    from its create request on; it lists, and deletes, only droplets that carry both. The
    firewall applies to the instance tag, so new droplets are behind it from their first boot.
    """

    def __init__(
        self,
        *,
        instance: str,
        token: str | None,
        token_env: str,
        endpoint: str,
        region: str,
        size: str,
        image: str,
        proxy: ProxySettings,
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = PAGE_SIZE,
        timeout_s: tuple[float, float] = TIMEOUT_S,
    ) -> None:
        self._instance = instance
        self._timeout_s = timeout_s
        self._token = token
        self._token_env = token_env
        self._env = Envelope(
            f"{PROVIDER}/{instance}", tuple(s for s in (token, proxy.password) if s), sleep
        )
        # urljoin drops the last path segment of a base without a trailing slash: ".../v2"
        # would send requests to "/droplets" instead of "/v2/droplets".
        self._endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        host = urlsplit(self._endpoint).hostname or "the API"
        self._rest = RestCalls(self._env, host, self._auth_error)
        self._region = region
        self._size = size
        self._image = image
        self._proxy = proxy
        self._page_size = page_size
        self._tag = instance_tag(instance)
        # Droplets this adapter has seen carrying both tags (listed or created): deleting one
        # of them needs no ownership read. Droplet ids are never reused.
        self._owned: set[str] = set()
        # The library logs every request's parameters at DEBUG, and a create's carry the user
        # data with the proxy password: none of that may reach a log, whatever the root level.
        logging.getLogger("digitalocean").setLevel(logging.INFO)

    @property
    def endpoint(self) -> str:
        """The API base URL this instance talks to (ends in ``/``)."""
        return self._endpoint

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        proxies = []
        owned = set()
        params = {"tag_name": self._tag}
        with self._env.reading("list droplets"):
            for droplet in self._pages("droplets", "droplets", "list droplets", params):
                self._droplet_id(droplet)  # even one not ours: a garbled list is no list
                if not owns_tags(droplet.get("tags"), self._instance):
                    continue  # the tag filter matched, but the other mark is missing
                proxy = self._to_proxy(droplet)
                owned.add(proxy.id)
                proxies.append(proxy)
        self._owned = owned
        return proxies

    def create_proxy(self) -> Proxy:
        import digitalocean

        from cloudproxy_cli.adapters.user_data import render_user_data

        try:
            user_data = render_user_data(self._proxy)
        except ValueError as exc:  # its messages never quote the offending value
            raise self._env.error(f"cannot render the user data: {exc}") from None
        # Unique: after a lost answer the droplet is found again by this name.
        name = vm_name(self._instance)
        body = {
            "name": name,
            "region": self._region,
            "size": self._size,
            "image": self._image,
            # In the create request itself: a droplet is never, not even briefly, untagged
            # (and so outside the firewall, and invisible to list).
            "tags": [TAG, self._tag],
            "user_data": user_data,
        }
        # Droplet.create() keeps only the new id and drops created_at with the rest of the
        # answer; get_data() returns the answer itself, from the same single POST.
        manager = digitalocean.Manager(**self._sdk())
        what = "create droplet"
        self._require_token()
        try:
            # No idempotency key in this API: a create whose answer was lost is looked up by
            # its unique name before it is ever sent again.
            answer = self._rest.create(
                what,
                partial(
                    self._unwrap,
                    what,
                    partial(manager.get_data, "droplets/", type="POST", params=body),
                ),
                partial(self._find_created, manager, name),
            )
        except HttpError as exc:
            raise self._rest.error(what, exc) from None
        droplet = answer.get("droplet") if isinstance(answer, dict) else None
        if not isinstance(droplet, dict):
            raise self._env.error("create droplet: the answer names no droplet")
        with self._env.reading("create droplet"):
            proxy = self._to_proxy(droplet)
        self._owned.add(proxy.id)
        return proxy

    def _find_created(self, manager: Any, name: str) -> dict[str, Any] | None:
        """The droplet named ``name`` carrying both tags, as a create answers it (``None``: no
        such droplet). One request, errors raised as ``_unwrap`` raises them."""
        what = "find droplet"
        # The API's name filter is exact (case-insensitive) and cannot be combined with tag_name.
        query = {"name": name, "per_page": self._page_size}
        answer = self._unwrap(what, partial(manager.get_data, "droplets", params=query))
        found = Named("droplets", "name", name, self._instance).pick(answer, self._env, what)
        return None if found is None else {"droplet": found}

    def delete_proxy(self, proxy_id: str) -> None:
        import digitalocean

        if not proxy_id.isdigit():  # also keeps any other path out of the URL
            raise self._env.error(f"{proxy_id!r} is not a droplet id")

        manager = digitalocean.Manager(**self._sdk())
        target = digitalocean.Droplet(id=int(proxy_id), **self._sdk())
        guarded_delete(
            proxy_id,
            owned=self._owned,
            read=lambda: self._rest.item_or_none(
                "read droplet",
                partial(
                    self._request,
                    "read droplet",
                    "GET",
                    partial(manager.get_data, f"droplets/{proxy_id}"),
                ),
                "droplet",
            ),
            owns=lambda droplet: owns_tags(droplet.get("tags"), self._instance),
            delete=lambda _: self._rest.delete(
                "delete droplet", partial(self._request, "delete droplet", "DELETE", target.destroy)
            ),
            key=self._env.key,
            noun="droplet",
        )

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """One GET of the remembered firewall; found by name (a list) or created if gone, and
        rewritten (one PUT) if its rules or tag differ from ours."""
        found = self._read_firewall(known_id) if known_id else None
        if found is None:
            name = firewall_name(self._instance)
            pages = self._pages("firewalls", "firewalls", "list firewalls")
            found = next((f for f in pages if f.get("name") == name and f.get("id")), None)
        if found is None:
            return self._create_firewall()
        if not self._firewall_ok(found):
            self._repair_firewall(found)
        return str(found["id"])

    # --- firewall ---------------------------------------------------------------------------

    def _read_firewall(self, firewall_id: str) -> dict[str, Any] | None:
        """Our firewall ``firewall_id``; ``None`` if it is gone (or is not ours by name)."""
        import digitalocean

        if not _FIREWALL_ID.fullmatch(firewall_id):  # also keeps any other path out of the URL
            return None
        manager = digitalocean.Manager(**self._sdk())
        read = partial(manager.get_data, f"firewalls/{firewall_id}")
        found = self._rest.item_or_none(
            "read firewall", partial(self._request, "read firewall", "GET", read), "firewall"
        )
        if found is None or found.get("name") != firewall_name(self._instance):
            return None
        return found

    def _firewall_body(self, tags: Iterable[str] = ()) -> dict[str, Any]:
        """The whole firewall as we want it: the proxy port in, everything out."""
        rules = FirewallRules.for_proxy(self._proxy)
        inbound = [{"protocol": "tcp", "ports": str(rules.port),
                    "sources": {"addresses": list(rules.sources)}}]  # fmt: skip
        # "1-65535", not "0": the API answers "0" for "all ports" but asks for a range.
        outbound = [{"protocol": protocol, "ports": _ALL_PORTS,
                     "destinations": {"addresses": [OPEN_IPV4, OPEN_IPV6]}}
                    for protocol in ("tcp", "udp")]  # fmt: skip
        return {
            "name": firewall_name(self._instance),
            "inbound_rules": inbound,
            "outbound_rules": outbound,
            "tags": sorted({*tags, self._tag}),
        }

    def _firewall_ok(self, firewall: dict[str, Any]) -> bool:
        wanted = self._firewall_body()
        tags = firewall.get("tags")
        return (
            isinstance(tags, list)
            and self._tag in tags
            and _grants(firewall.get("inbound_rules"), "sources")
            == _grants(wanted["inbound_rules"], "sources")
            and _grants(firewall.get("outbound_rules"), "destinations")
            == _grants(wanted["outbound_rules"], "destinations")
        )

    def _ensure_tag(self) -> None:
        """DigitalOcean refuses a firewall naming a tag that does not exist (yet, or any more:
        deleting a tag in the console also takes it off the firewall)."""
        import digitalocean

        tag = digitalocean.Tag(name=self._tag, **self._sdk())
        try:
            self._request("create tag", "POST", tag.create)
        except HttpError as exc:
            if exc.status not in _TAG_EXISTS:
                raise self._rest.error("create tag", exc) from None

    def _repair_firewall(self, firewall: dict[str, Any]) -> None:
        """Rewrite our firewall's rules and tags (a PUT replaces the whole firewall); the
        droplets and other tags it was applied to stay as they are."""
        import digitalocean

        firewall_id = str(firewall["id"])
        log.warning(
            "%s: firewall %s differs from PROXY_PORT/ONLY_HOST_IP/HOST_IP or lost its tag; "
            "repairing it", self._env.key, firewall_id,
        )  # fmt: skip
        listed = firewall.get("tags")
        tags = [str(t) for t in listed] if isinstance(listed, list) else []
        if self._tag not in tags:
            self._ensure_tag()
        body = {**self._firewall_body(tags), "droplet_ids": list(firewall.get("droplet_ids") or [])}
        manager = digitalocean.Manager(**self._sdk())
        self._call(
            "repair firewall",
            "PUT",
            partial(manager.get_data, f"firewalls/{firewall_id}", type="PUT", params=body),
        )

    def _create_firewall(self) -> str:
        import digitalocean

        self._ensure_tag()  # the first create of a new account comes after this call
        manager = digitalocean.Manager(**self._sdk())
        body = {**self._firewall_body(), "droplet_ids": []}
        answer = self._call(
            "create firewall",
            "POST",
            partial(manager.get_data, "firewalls", type="POST", params=body),
        )
        firewall = answer.get("firewall") if isinstance(answer, dict) else None
        if not isinstance(firewall, dict) or not firewall.get("id"):
            raise self._env.error("create firewall: the answer names no firewall")
        return str(firewall["id"])

    # --- helpers ----------------------------------------------------------------------------

    def _sdk(self) -> dict[str, Any]:
        """What every python-digitalocean object of this instance is made with.

        The token and endpoint always explicitly: without them the library falls back to
        ``$DIGITALOCEAN_ACCESS_TOKEN``/``$DIGITALOCEAN_END_POINT``, which name one account for
        the whole process. The library sets every keyword as an attribute, and asks the
        ``get_timeout`` one for each request's timeout (else it waits forever unless
        ``$PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC`` is set).
        """
        return {
            "token": self._token,
            "end_point": self._endpoint,
            "get_timeout": lambda: self._timeout_s,
        }

    def _pages(
        self, path: str, key: str, what: str, params: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, one request per page, following ``links.pages.next``.

        Pages are asked for by number, through this instance's endpoint. The library's own
        pagination (used when no ``page`` is given) reads later pages without checking their
        status: a failed page 2 silently ends the list early, and a partial inventory would
        make the engine create proxies that already exist.
        """
        import digitalocean

        manager = digitalocean.Manager(**self._sdk())

        def fetch(page: int | None) -> tuple[Iterable[dict[str, Any]], int | None]:
            number = page or 1
            query: dict[str, str | int] = {
                **(params or {}),
                "per_page": self._page_size,
                "page": number,
            }
            answer = self._call(what, "GET", partial(manager.get_data, path, params=query))
            items = answer.get(key) if isinstance(answer, dict) else None
            if not isinstance(items, list):
                raise self._env.error(f"{what}: the answer has no {key!r} list")
            try:
                following = _next_page(answer)
            except ValueError:
                raise self._env.error(f"{what}: the API's next-page link names no page") from None
            if following is not None and following <= number:
                raise self._env.error(f"{what}: the API's next page goes backwards")
            if not all(isinstance(item, dict) for item in items):
                # Skipping it could hide a VM of ours, and the engine would create another.
                raise self._env.error(f"{what}: the answer lists an item that is not an object")
            return items, following

        return paginate(fetch, fail=self._env.error, what=what)

    def _call(self, what: str, method: str, fn: Callable[[], T]) -> T:
        """``_request``, with every error answer turned into a one-line ``ProviderError``."""
        try:
            return self._request(what, method, fn)
        except HttpError as exc:
            raise self._rest.error(what, exc) from None

    def _request(self, what: str, method: str, fn: Callable[[], T]) -> T:
        """One SDK call, retried on 429/5xx (honouring Retry-After and ``ratelimit-reset``).

        Raises ``HttpError`` for an error answer other than 401/403, ``ProviderError`` for
        everything else. Messages carry what the API or library said only scrubbed of secrets,
        and never chain the library's exception, which may hold the request.
        """
        self._require_token()
        return self._rest.request(what, method, partial(self._unwrap, what, fn))

    def _require_token(self) -> None:
        if not self._token:
            raise self._env.error(f"no access token; set {self._token_env}")

    def _unwrap(self, what: str, fn: Callable[[], T]) -> T:
        """One SDK call, once: an error answer as ``HttpError``, a transport failure as
        requests raised it, anything else the library raised a one-line ``ProviderError``."""
        try:
            return fn()
        except requests.RequestException:
            raise  # RestCalls makes it a short message of its own
        # The library raises DataReadError, JSONReadError, NotFoundError, even IndexError.
        except Exception as exc:  # noqa: BLE001 - what it is depends on the response only
            response = _response_of(exc.__traceback__)
            if response is not None and response.status_code >= 400:
                raise http_error(response, "message", self._env) from None
            raise self._env.error(
                f"{what} failed: {type(exc).__name__}: {self._env.scrub(exc)}"
            ) from None

    def _auth_error(self, what: str, exc: HttpError) -> ProviderError:
        if exc.status == 401:
            return self._env.error(f"authentication failed (401); check {self._token_env}")
        return self._env.error(
            f"permission denied (403) for {what}; check that "
            f"{self._token_env} has the droplet, firewall and tag scopes"
        )

    def _droplet_id(self, droplet: dict[str, Any]) -> str:
        found = droplet.get("id")
        if isinstance(found, bool) or not str(found or "").isdigit():
            raise self._env.error("the API listed a droplet without a valid id")
        return str(found)

    def _to_proxy(self, droplet: dict[str, Any]) -> Proxy:
        return Proxy(
            id=self._droplet_id(droplet),
            created_at=self._created_at(droplet),
            ip=_public_ipv4(droplet),
        )

    def _created_at(self, droplet: dict[str, Any]) -> datetime:
        try:
            return utc_datetime(droplet.get("created_at"))  # "2026-01-01T00:00:00Z"
        except ValueError:
            raise ProviderError(
                f"{self._env.key}: droplet {droplet.get('id')} has no valid created_at"
            ) from None


def _public_ipv4(droplet: dict[str, Any]) -> str | None:
    """The droplet's public IPv4 from ``networks.v4``; ``None`` while it has none."""
    networks = droplet.get("networks")
    v4 = networks.get("v4") if isinstance(networks, dict) else None
    for net in v4 if isinstance(v4, list) else []:
        if not isinstance(net, dict) or net.get("type") != "public":
            continue
        try:
            address = ipaddress.IPv4Address(str(net.get("ip_address")))
        except ValueError:
            continue
        if not address.is_unspecified:
            return str(address)
    return None


def _next_page(answer: dict[str, Any]) -> int | None:
    """The page number ``links.pages.next`` names; ``None`` on the last page.

    Only the number is taken from the link, never its host: the next request goes to this
    instance's endpoint like the first (``ValueError`` if the link names no page)."""
    links = answer.get("links")
    pages = links.get("pages") if isinstance(links, dict) else None
    following = pages.get("next") if isinstance(pages, dict) else None
    if not following:
        return None
    numbers = parse_qs(urlsplit(str(following)).query).get("page", [])
    if len(numbers) != 1 or not numbers[0].isdigit():
        raise ValueError(following)
    return int(numbers[0])


def _grants(rules: object, side: str) -> frozenset[Grant]:
    """What DigitalOcean firewall rules let through, one grant per protocol, ports and
    address. Ports ``"0"``/``"all"``/empty are every port; a tag, droplet or load balancer
    target, or anything unreadable, is a grant of its own that no wanted rule matches."""
    found: set[Grant] = set()
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        protocol = str(rule.get("protocol"))
        ports = str(rule.get("ports") or "0").strip()
        span = (1, 65535) if ports in {"0", "all"} else port_range(ports) or (-1, -1)
        if protocol == "icmp":
            span = (0, 0)
        targets = rule.get(side)
        for kind, values in (targets if isinstance(targets, dict) else {}).items():
            for value in values if isinstance(values, list) else [values]:
                cidr = canonical_cidr(value) if kind == "addresses" else None
                found.add(Grant(protocol, *span, cidr or f"{kind}:{value}"))
    return frozenset(found)
