"""Where things are, for tests in any folder: the repository and the optional shared data."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository: real text and published data sets, read-only and
# optional (tests that need it skip with the reason when it is absent).
SHARED_DATA = REPO.parent / "shared" / "data"
