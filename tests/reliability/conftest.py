import sys
from pathlib import Path

# server_support lives beside the server tests; these tests start real servers the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
