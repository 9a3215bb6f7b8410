import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # anyio's default fixture is parametrized over installed backends; trio
    # happens to be installed here but is no dependency of ours.
    return "asyncio"


# --soak: the long reliability tier (issue 6). Without it, tests marked
# `soak` are skipped and the `soak` fixture is False, so the fast tier stays
# within the CI budget; with it they run and size-aware tests scale up.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run the long reliability tier (tests marked soak)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long reliability tier, run only with --soak")
    if config.getoption("--soak"):
        os.environ["RELIABILITY_TIER"] = "soak"  # its figures go to reports/reliability-soak.json


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long reliability tier: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))
