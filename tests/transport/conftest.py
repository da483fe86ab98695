"""Transport test fixtures; the helpers live in ``transport_helpers`` (importable by the tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from transport_helpers import other_pki, pki, server  # noqa: E402,F401  (fixtures)
