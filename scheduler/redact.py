"""Keeping secrets out of what is shown: credentials inside URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "********"


def mask_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by the mask, for logs, errors, status
    and ``config --show``; anything that does not parse as a URL is returned unchanged
    unless it carries an ``@`` before its path, which is masked too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK if "@" in url else url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query,
                       parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credential strings inside ``url`` (user info, password), longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if "@" not in parts.netloc:
        return []
    userinfo = parts.netloc.rsplit("@", 1)[0]
    found = {userinfo, *(p for p in userinfo.split(":", 1) if len(p) >= 3)}
    return sorted(found, key=len, reverse=True)
