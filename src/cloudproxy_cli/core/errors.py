"""The exception tree. Every error the CLI can meet derives from ``CloudProxyError``.

CloudProxyError
├── ConfigError          invalid settings (exit 4)
├── UsageError           bad command-line input (exit 2)
├── LockHeldError        another run holds the state lock (exit 5)
├── StateError           the state file cannot be read or written (exit 1)
└── ProviderError        a provider call failed (the instance fails for this run)
    ├── ProxyNotFoundError  no proxy has the given address
    ├── FirewallMissingError  a create named a firewall that no longer exists
    └── RateLimitedError    the API asked us to back off: no more calls for that instance this run
"""

from __future__ import annotations


class CloudProxyError(Exception):
    """Base of every error this tool raises on purpose. ``str(err)`` is one line for a person."""


class ConfigError(CloudProxyError):
    """The configuration is invalid. The message names the setting."""


class UsageError(CloudProxyError):
    """The command line asked for something impossible (unknown instance, bad value)."""


class LockHeldError(CloudProxyError):
    """Another cloudproxy run holds the state lock."""


class StateError(CloudProxyError):
    """The state file cannot be read or written."""


class ProviderError(CloudProxyError):
    """A provider API call failed. The message never contains a secret."""


class ProxyNotFoundError(ProviderError):
    """No proxy of any enabled instance has the given address."""


class FirewallMissingError(ProviderError):
    """A create failed because the firewall id remembered in the state no longer exists."""


class RateLimitedError(ProviderError):
    """The API asked us to wait (429, Retry-After, DigitalOcean's ``ratelimit-reset``) longer than
    a run may wait, or kept refusing: that instance makes no more calls in this run."""
