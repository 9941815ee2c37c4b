"""One `distill serve` shared by this folder's tests (starting one takes seconds: torch imports)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.served import Served, start_served


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_served(tmp_path_factory.mktemp("serve") / "home")
    yield served
    if served.process is not None and served.process.alive():
        served.stop()
