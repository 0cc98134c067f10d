"""What counts as a secret, and every form of it that gets hidden.

A secret is a config value that came from a ``${VAR}``, or one set by a ``BATCHSCORE_*``
variable that can carry a credential (see ``is_credential_setting``). Libraries rarely print a
secret whole: they print a URL's path, its user and password, a query value, or a
percent-encoded copy. ``secret_forms`` lists all of those; ``Redactor`` replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"

# Parts of a URL shorter than this, or plain lowercase words ('services', 'insecure',
# 'smtp.example.com'), stay visible: hiding them everywhere would garble every log line.
MIN_TOKEN_LENGTH = 6
# Passwords are hidden at any length from this one up.
MIN_PASSWORD_LENGTH = 3
_PLAIN_WORDS = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")

# A BATCHSCORE_* key whose last part names a credential (catalog.s3.secret-access-key, …).
_CREDENTIAL_NAME = re.compile(r"password|passwd|secret|token|credential|key|auth|signature")
# Keys whose value is a URL that carries its service's token (slack://T…/B…/xxxx).
_URL_SECRET_KEYS = ("notification_urls",)


def looks_like_token(part: str) -> bool:
    """A URL part worth hiding: at least 6 characters and not a plain lowercase word."""
    return len(part) >= MIN_TOKEN_LENGTH and not _PLAIN_WORDS.fullmatch(part)


def _url_parts(value: str) -> set[str]:
    """The meaningful pieces of a URL with a host: user, password, ``user:password``, the path
    (whole, and each tail of two or more segments), token-like path segments, query values
    and fragment. An empty set for anything that is not such a URL."""
    try:
        url = urlsplit(value)
    except ValueError:
        return set()
    if not url.scheme or not url.netloc:
        return set()
    parts: set[str] = set()
    userinfo, at, _host = url.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and len(unquote(password)) >= MIN_PASSWORD_LENGTH:
            parts.add(password)
            parts.add(userinfo)
        if looks_like_token(unquote(user)):
            parts.add(user)
    segments = [s for s in url.path.split("/") if s]
    for start in range(len(segments)):
        tail = "/".join(segments[start:])
        whole_or_many = start == 0 or len(segments) - start >= 2
        if whole_or_many and len(tail) >= MIN_TOKEN_LENGTH:
            parts.add(tail)
        if looks_like_token(unquote(segments[start])):
            parts.add(segments[start])
    for pair in url.query.split("&"):
        _name, _eq, query_value = pair.partition("=")
        if looks_like_token(unquote(query_value)):
            parts.add(query_value)
    if looks_like_token(unquote(url.fragment)):
        parts.add(url.fragment)
    return parts


def secret_forms(secret: str) -> set[str]:
    """Every string that would give ``secret`` away: itself, the parts of a URL (see
    ``_url_parts``), and each of those decoded and encoded with ``quote`` (``/`` kept or
    not) and ``quote_plus``."""
    if not secret:
        return set()
    forms: set[str] = set()
    for piece in {secret, *_url_parts(secret)}:
        for plain in {piece, unquote(piece), unquote(piece.replace("+", " "))}:
            forms.update(
                {
                    plain,
                    quote(plain),
                    quote(plain, safe=""),
                    quote_plus(plain),
                    quote_plus(plain, safe="/"),
                }
            )
    return {f for f in forms if f}


@lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    forms = set().union(*(secret_forms(s) for s in secrets)) if secrets else set()
    if not forms:
        return None
    # Longest first, so a whole URL becomes '***' rather than 'https://host/***'.
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every form of every secret in ``text`` with ``***``."""
    pattern = _pattern(frozenset(secrets))
    return pattern.sub(MASK, text) if pattern is not None and text else text


def is_credential_setting(key: str, value: str) -> bool:
    """Whether a value set by a ``BATCHSCORE_*`` variable is a secret.

    It is when its key names a credential (its last part contains ``password``, ``secret``,
    ``token``, ``credential``, ``key``, ``auth`` or ``signature``, e.g.
    ``BATCHSCORE_CATALOG__TOKEN``), when it is a notification URL (those carry
    their service's token), or when it is a URL with a user or password in it
    (``BATCHSCORE_CATALOG__URI=postgresql://user:pw@host/db``). Other values (``append``,
    ``sql``, ``s3://bucket/prefix``) stay visible.
    """
    if not value:
        return False
    dotted = key.lower()
    last = dotted.rsplit(".", 1)[-1]
    if _CREDENTIAL_NAME.search(last) or dotted.split(".")[0] in _URL_SECRET_KEYS:
        return True
    try:
        url = urlsplit(value)
    except ValueError:
        return False
    return bool(url.scheme and "@" in url.netloc)
