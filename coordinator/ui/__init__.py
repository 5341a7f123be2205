"""The rollout page a replica serves at ``/ui``: three static files shipped in the package
(``index.html``, ``ui.js``, ``ui.css``; pyproject's package-data carries them into a wheel),
read with ``importlib.resources`` so a zipped or non-editable install finds them too.

No build step, no CDN, no fetch of anything outside the replica: the page's script asks the
replica's own ``/status`` (every few seconds) and ``/status/node/<prefix>`` (the search box),
and draws its charts as inline SVG itself.  The files hold no data: what a page shows comes
from those guarded endpoints (``coordinator.readaccess``), with the token the page asks for.

``PAGE_HEADERS`` go with every file: a Content-Security-Policy that lets the page load only
its own script and style and fetch only its own origin (so a node id or a reason that got
into the DOM as markup could still run nothing), no sniffing, no referrer, no framing, no
caching (a page served before a token was set must not outlive it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

__all__ = ["PAGE_FILES", "PAGE_HEADERS", "PagePart", "page_file"]

#: URL path -> (file in this package, content type).  Nothing else under ``/ui`` exists.
PAGE_FILES: Final = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/ui/ui.css": ("ui.css", "text/css; charset=utf-8"),
}

PAGE_HEADERS: Final = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class PagePart:
    """One of the page's files, as the server sends it."""

    ctype: str
    data: bytes


@cache
def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def page_file(path: str) -> PagePart | None:
    """The file for ``path`` (``/ui``, ``/ui/ui.js``, ...), or None: not one of the page's."""
    found = PAGE_FILES.get(path)
    if found is None:
        return None
    name, ctype = found
    return PagePart(ctype=ctype, data=_read(name))
