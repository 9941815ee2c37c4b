"""The one rule that keeps server paths out of anything a client can read.

Library exceptions (PIL, zipfile, numpy, torch, the ONNX exporter) put the file
they failed on into their message; those messages reach error bodies, job
errors and served metrics. Every message built from one goes through
`scrub_paths`: known folders become placeholders (or vanish, for a staging
folder whose relative names are what the client sent), then whatever absolute
path is left becomes `<path>`. API routes (`/v1/...`) are not server paths and
are kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# An absolute POSIX path: a `/` that starts a word (not inside a/b, a URL, `<data>/x` or `~/x`), up to
# whitespace or a quote. `/v1/...` is an API route a message may name on purpose.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.>:/~\-])/(?!v1/)[^\s'\"`,;)\]]+")
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\[^\s'\"`,;)\]]+")
MAX_MESSAGE_CHARS = 500


def scrub_paths(text: str, known: Mapping[str | Path, str] | None = None) -> str:
    """`text` with each `known` folder replaced by its placeholder (longest first), then any other
    absolute path replaced by `<path>`.

    A folder maps to "" when what follows it is the client's own relative name (an archive
    member), so `.../staging-1/tree/train/cat/x.jpg` reads `train/cat/x.jpg`.
    """
    replacements: dict[str, str] = {}
    for folder, placeholder in (known or {}).items():
        name = str(folder).rstrip("/")
        if name:
            # With the separator first, so an emptied folder leaves a relative name, not "/train/...".
            replacements[name + "/"] = placeholder + "/" if placeholder else ""
            replacements[name] = placeholder
    for folder in sorted(replacements, key=len, reverse=True):
        text = text.replace(folder, replacements[folder])
    text = _ABSOLUTE_PATH.sub("<path>", text)
    return _WINDOWS_PATH.sub("<path>", text)


def exception_text(exc: BaseException, known: Mapping[str | Path, str] | None = None) -> str:
    """A library exception as one scrubbed, bounded line a client may read (its first line only:
    a traceback-like tail or a hint such as torch's never helps a service's client)."""
    text = str(exc).strip() or type(exc).__name__
    line = re.sub(r"\x1b\[[0-9;]*m", "", text.splitlines()[0])  # terminal colour codes (the ONNX exporter)
    return scrub_paths(line, known)[:MAX_MESSAGE_CHARS]
