import pytest


@pytest.fixture
def anyio_backend() -> str:
    # anyio's default fixture is parametrized over installed backends; trio
    # happens to be installed here but is no dependency of ours.
    return "asyncio"
