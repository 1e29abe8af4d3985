"""The imperative shell of one run: lock → load → observe → reconcile → execute → save."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

from cloudproxy_cli.core.caps import create_refused
from cloudproxy_cli.core.errors import (
    CloudProxyError,
    FirewallMissingError,
    ProviderError,
    ProxyNotFoundError,
    RateLimitedError,
)
from cloudproxy_cli.core.firewall import firewall_check_due
from cloudproxy_cli.core.model import InstanceKey, ProbeResult, ProbeTarget, Proxy
from cloudproxy_cli.core.outcomes import apply_outcomes
from cloudproxy_cli.core.plan import ActionOutcome, CreateAction, DeleteAction, Plan
from cloudproxy_cli.core.policy import InstancePolicy
from cloudproxy_cli.core.ports import Clock, Prober, Provider, StateStore
from cloudproxy_cli.core.reconcile import manual_delete_plan, reconcile
from cloudproxy_cli.core.snapshot import failed_snapshot
from cloudproxy_cli.core.state import InstanceSnapshot, InstanceState, State

log = logging.getLogger("cloudproxy")


@dataclass(frozen=True)
class InstanceRuntime:
    """One enabled provider instance, ready to use: its adapter and its policy."""

    key: InstanceKey
    provider: Provider
    policy: InstancePolicy
    proxy_port: int  # where its proxies listen unless a proxy names its own port


@dataclass(frozen=True)
class InstanceReport:
    key: InstanceKey
    error: str | None = None
    plan: Plan | None = None
    outcomes: tuple[ActionOutcome, ...] = ()
    snapshot: InstanceSnapshot | None = None
    log: tuple[str, ...] = ()
    firewall_error: str | None = None  # the hourly firewall check failed (no create needed it)

    @property
    def failed(self) -> bool:
        return (
            self.error is not None
            or self.firewall_error is not None
            or any(not o.ok for o in self.outcomes)
        )

    def errors(self) -> list[str]:
        found = [self.error] if self.error else []
        found += [self.firewall_error] if self.firewall_error else []
        found += [o.error for o in self.outcomes if not o.ok and o.error]
        return found


@dataclass(frozen=True)
class RunReport:
    started_at: datetime
    dry_run: bool
    instances: tuple[InstanceReport, ...] = ()
    state_warning: str | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)


def _targets(runtime: InstanceRuntime, proxies: Sequence[Proxy]) -> list[ProbeTarget]:
    return [
        ProbeTarget(p.id, p.ip, p.port if p.port is not None else runtime.proxy_port)
        for p in proxies
        if p.ip is not None
    ]


@dataclass
class _FirewallStep:
    """One instance's firewall in one run: verified (and repaired) at most once, before the
    first create or, when the run creates nothing, if the hourly check is due."""

    provider: Provider
    firewall_id: str | None
    checked_at: datetime | None
    now: datetime
    error: str | None = None
    done: bool = False

    def ensure(self) -> str | None:
        """Verify the firewall (once per run); the failure, if it could not be done."""
        if not self.done:
            self.done = True
            try:
                self.firewall_id = self.provider.ensure_firewall(self.firewall_id)
                self.checked_at = self.now
            except CloudProxyError as exc:
                self.error = f"firewall: could not verify or repair it: {exc}"
        return self.error

    def forget(self) -> None:
        """The remembered id is gone: the next run finds (or makes) the firewall again."""
        self.firewall_id = None
        self.checked_at = None

    def into(self, state: InstanceState) -> InstanceState:
        return state._replace(firewall_id=self.firewall_id, firewall_checked_at=self.checked_at)


def _execute(
    runtime: InstanceRuntime,
    plan: Plan,
    firewall: _FirewallStep,
    on_progress: Callable[[tuple[ActionOutcome, ...]], None],
) -> Iterator[ActionOutcome]:
    """Deletes first (strategy replace frees its slot before creating), then creates.

    Before the first create, the instance's firewall is verified and repaired (``firewall``);
    if that fails, every create of this run fails with it. Each outcome is reported before the
    next action starts, so that the caller can persist it: a crash mid-run never forgets an
    action already taken.
    """
    done: list[ActionOutcome] = []
    backed_off: str | None = None  # the API asked this instance to stop calling for this run
    actions: list[CreateAction | DeleteAction] = [*plan.deletes, *plan.creates]
    for action in actions:
        outcome: ActionOutcome
        try:
            if backed_off is not None:
                raise ProviderError(f"not attempted: {backed_off}")
            if isinstance(action, DeleteAction):
                runtime.provider.delete_proxy(action.proxy_id)
                outcome = ActionOutcome(action, ok=True)
                log.info(
                    "Deleted %s in %s: %s", action.address or action.proxy_id, plan.key,
                    action.reason,
                )  # fmt: skip
            else:
                if refused := create_refused(plan, runtime.policy, done):
                    raise ProviderError(refused)
                firewall_error = firewall.ensure()
                if firewall_error is not None:
                    raise ProviderError(firewall_error)
                created = runtime.provider.create_proxy()
                outcome = ActionOutcome(action, ok=True, created=created)
                log.info("Created %s in %s: %s", created.id, plan.key, action.reason)
        except RateLimitedError as exc:
            backed_off = str(exc)
            outcome = ActionOutcome(action, ok=False, error=backed_off)
            log.error("%s: stopping its actions for this run: %s", plan.key, exc)
        except FirewallMissingError as exc:
            firewall.forget()
            outcome = ActionOutcome(action, ok=False, error=str(exc))
            log.error("Could not create a proxy in %s: %s", plan.key, exc)
        except CloudProxyError as exc:
            outcome = ActionOutcome(action, ok=False, error=str(exc))
            verb = "delete" if isinstance(action, DeleteAction) else "create"
            log.error("Could not %s a proxy in %s: %s", verb, plan.key, exc)
        done.append(outcome)
        on_progress(tuple(done))
        yield outcome


def _hourly_check(runtime: InstanceRuntime, firewall: _FirewallStep) -> str | None:
    """The firewall check of a run that created nothing, if due; its failure, if any."""
    due = firewall_check_due(firewall.checked_at, now=firewall.now, creating=False)
    if firewall.done or not due:
        return None
    error = firewall.ensure()
    if error is not None:
        log.error("%s: %s", runtime.key, error)
    return error


def _note_errors(
    final: InstanceState,
    outcomes: Sequence[ActionOutcome],
    firewall_error: str | None,
    now: datetime,
) -> InstanceState:
    """``final`` with the run's last error in its snapshot, for ``rolling status``."""
    errors = [o.error for o in outcomes if not o.ok and o.error]
    errors += [firewall_error] if firewall_error else []
    if not errors or final.snapshot is None:
        return final
    snapshot = final.snapshot._replace(last_error=errors[-1], last_error_at=now)
    return final._replace(snapshot=snapshot)


def run_reconcile(
    instances_for: Callable[[State], Sequence[InstanceRuntime]],
    store: StateStore,
    prober: Prober,
    clock: Clock,
    *,
    dry_run: bool = False,
) -> RunReport:
    """One `cloudproxy reconcile`. A dry run takes no lock, changes nothing and saves nothing.

    ``instances_for`` builds the instances from the state read under the lock, so that the
    `rolling set` overrides in force are exactly those of the state this run acts on.
    """
    started_at = clock.now()
    with nullcontext() if dry_run else store.lock():
        loaded = store.load()
        if loaded.warning:
            log.warning("%s", loaded.warning)
        state = loaded.state
        instances = instances_for(state)

        observed: dict[InstanceKey, list[Proxy]] = {}
        reports: dict[InstanceKey, InstanceReport] = {}
        for runtime in instances:
            try:
                observed[runtime.key] = runtime.provider.list_proxies()
            except ProviderError as exc:
                # Never act on an inventory we failed to read: no creates, no deletes.
                log.error("Could not list the proxies of %s: %s", runtime.key, exc)
                key = str(runtime.key)
                previous = state.instance(key)
                snap = failed_snapshot(previous.snapshot, str(exc), now=started_at)
                state = state.with_instance(key, previous._replace(snapshot=snap))
                reports[runtime.key] = InstanceReport(runtime.key, error=str(exc), snapshot=snap)

        # One concurrent probe of every proxy of every instance: about one timeout in all.
        targets = [t for r in instances if r.key in observed for t in _targets(r, observed[r.key])]
        health: dict[str, ProbeResult] = prober.probe(targets) if targets else {}

        now = clock.now()
        for runtime in instances:
            if runtime.key not in observed:
                continue
            key = str(runtime.key)
            plan = reconcile(
                runtime.key,
                observed[runtime.key],
                health,
                state.instance(key),
                runtime.policy,
                now=now,
            )
            for warning in plan.warnings:
                log.warning("%s", warning)
            for line in plan.intents if dry_run else plan.log:
                log.info("%s", line)
            if dry_run:
                reports[runtime.key] = InstanceReport(runtime.key, plan=plan, log=plan.intents)
                continue

            previous = state.instance(key)
            firewall = _FirewallStep(
                runtime.provider, previous.firewall_id, previous.firewall_checked_at, now
            )

            def persist(
                done: tuple[ActionOutcome, ...],
                plan: Plan = plan,
                key: str = key,
                policy: InstancePolicy = runtime.policy,
                firewall: _FirewallStep = firewall,
            ) -> None:
                nonlocal state
                partial, _ = apply_outcomes(
                    plan, done, now=now, policy=policy, update_snapshot=False
                )
                state = state.with_instance(key, firewall.into(partial))
                store.save(state)

            outcomes = tuple(_execute(runtime, plan, firewall, persist))
            firewall_error = _hourly_check(runtime, firewall)
            final, completed = apply_outcomes(
                plan, outcomes, now=clock.now(), policy=runtime.policy
            )
            final = firewall.into(final)
            for line in completed:
                log.info("%s", line)
            final = _note_errors(final, outcomes, firewall_error, now)
            state = state.with_instance(key, final)
            reports[runtime.key] = InstanceReport(
                runtime.key,
                plan=plan,
                outcomes=outcomes,
                snapshot=final.snapshot,
                log=plan.log + completed,
                firewall_error=firewall_error,
            )
        if not dry_run:
            store.save(state)
    return RunReport(
        started_at=started_at,
        dry_run=dry_run,
        instances=tuple(reports[r.key] for r in instances),
        state_warning=loaded.warning,
    )


@dataclass(frozen=True)
class DestroyReport:
    key: InstanceKey
    proxy: Proxy


def destroy_proxy(
    address: str,
    instances: Sequence[InstanceRuntime],
    store: StateStore,
    clock: Clock,
) -> DestroyReport:
    """`cloudproxy destroy ADDRESS`: delete that proxy now, bypassing the rolling rules.

    ADDRESS is what status shows (the IP, or ``ip:port`` for local proxies) or the proxy's id.
    Raises ``ProxyNotFoundError`` when no enabled instance has a proxy with that address (or id).
    An instance whose list fails is skipped; if the proxy was not found elsewhere, that failure
    is reported instead, since the proxy might be there.
    """
    with store.lock():
        state = store.load().state
        list_errors: list[str] = []
        for runtime in instances:
            try:
                proxies = runtime.provider.list_proxies()
            except ProviderError as exc:
                list_errors.append(f"{runtime.key}: {exc}")
                continue
            match = next((p for p in proxies if address in (p.address, p.id)), None)
            if match is None:
                continue
            key = str(runtime.key)
            plan = manual_delete_plan(runtime.key, match, state.instance(key), runtime.policy)
            runtime.provider.delete_proxy(match.id)
            outcome = ActionOutcome(plan.deletes[0], ok=True)
            final, _ = apply_outcomes(
                plan, (outcome,), now=clock.now(), policy=runtime.policy, update_snapshot=False
            )
            store.save(state.with_instance(key, final))
            log.info("Destroyed %s in %s; the next reconcile replaces it", address, runtime.key)
            return DestroyReport(runtime.key, match)
        if list_errors:
            raise ProviderError(
                f"no proxy {address} found, and some instances could not be listed: "
                + "; ".join(list_errors)
            )
        raise ProxyNotFoundError(f"no proxy with address {address} in any enabled instance")
