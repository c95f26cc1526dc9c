"""tests/eval: make eval_helpers.py importable by the test modules beside it (pytest runs in
importlib mode, which puts no test folder on sys.path)."""
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent))  # after tests/, whose conftest.py is the shared one
