"""Who may see the dashboard: the bind rule, the token check and CSRF tokens.

Loopback binds are open unless a token is set. Any other bind needs
``DASHBOARD_TOKEN``; requests then carry it as ``Authorization: Bearer TOKEN`` or as the
session cookie the login form sets. The cookie holds an HMAC derived from the token,
never the token itself; forms that change something carry another HMAC (CSRF token).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from scheduler.errors import ConfigError

COOKIE = "tinyscheduler_session"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str, actions: bool) -> None:
    """Refuse (ConfigError, exit 2) a bind or an action switch that would expose the
    dashboard without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"dashboard bind address {host} is not loopback: set "
            "TINYSCHEDULER_DASHBOARD_TOKEN (at least 16 characters) so that only people "
            "with the token can see it, or bind 127.0.0.1")
    if actions and not token:
        raise ConfigError("TINYSCHEDULER_DASHBOARD_ACTIONS=true needs "
                          "TINYSCHEDULER_DASHBOARD_TOKEN: the buttons change tasks")


def _mac(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    return _mac(token, "tinyscheduler-dashboard-session-v1")


def csrf_token(token: str) -> str:
    return _mac(token, "tinyscheduler-dashboard-csrf-v1")


def allowed(token: str, authorization: str | None, cookie: str | None) -> bool:
    """Whether a request with these header and cookie values may see the dashboard."""
    if not token:
        return True
    if authorization:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode()):
            return True
    if not cookie:
        return False
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def token_matches(token: str, given: str) -> bool:
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())
