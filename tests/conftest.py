import sys
from pathlib import Path

# Test helpers (tiny models, exact likelihood) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
