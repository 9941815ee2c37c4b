"""A Server-Sent Events reader: lines in, (event, id, data) records out (the WHATWG parsing rules we need)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Group the stream's lines into events; comments (keep-alives) and `retry:` lines are skipped."""
    event, data, last_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield ServerSentEvent(event=event, data="\n".join(data), id=last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
