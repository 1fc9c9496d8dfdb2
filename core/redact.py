"""One redaction for everything that leaves the process as text: log lines, dead-letter headers,
``simstream dlq show`` and the start-up settings dump.

Image URLs in events are signed (``X-Amz-Signature=``, ``?sig=``, ``#token=``) and broker or Milvus
URLs may carry passwords, so in every URL (any ``scheme://``, and ``file:`` paths) this masks:

- the password of the userinfo (``kafka://app:pw@b1`` -> ``kafka://app:***@b1``; a password may
  itself hold ``@``), or the whole userinfo when it is a bare token (``https://TOKEN@h`` -> ``https://***@h``);
- the query string (``?***``) and the fragment (``#***``).

Two passes, so that a ``;``-separated broker list has each URL's userinfo masked while a ``;``
inside a path still leaves that URL's query string masked.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
_USERINFO = re.compile(r"(?P<scheme>" + _SCHEME + r")"
                       r"(?P<user>[^\s/?#@:;'\"<>]*)(?P<password>:[^\s/?#;'\"<>]*)?@")
_QUERY_AND_FRAGMENT = re.compile(
    r"(?P<url>(?:" + _SCHEME + r"|file:)[^\s?#'\"<>]*)"
    r"(?P<query>\?[^\s#'\"<>]*)?"
    r"(?P<fragment>#[^\s'\"<>]*)?")


def _userinfo(m: re.Match[str]) -> str:
    if m.group("password") is None:
        return f"{m.group('scheme')}***@"
    return f"{m.group('scheme')}{m.group('user')}:***@"


def _query_and_fragment(m: re.Match[str]) -> str:
    return m.group("url") + ("?***" if m.group("query") else "") + ("#***" if m.group("fragment") else "")


def redact(text: str) -> str:
    """``text`` with the credentials, query strings and fragments of its URLs masked."""
    if ":" not in text or not any(c in text for c in "@?#"):
        return text  # the common case, cheaply: no URL, or a URL with nothing to hide
    return _QUERY_AND_FRAGMENT.sub(_query_and_fragment, _USERINFO.sub(_userinfo, text))
