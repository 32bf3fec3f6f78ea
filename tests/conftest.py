import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("DDRO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real collections beside the checkout (../shared/data); tests skip without them."""
    if not SHARED.is_dir():
        pytest.skip(f"shared collections not found at {SHARED} (set DDRO_SHARED_DATA)")
    return SHARED
