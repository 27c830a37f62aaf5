"""Fixtures shared by the gateway tests."""

from test_pipeline import world  # noqa: F401 - the gateway on real parts, for other modules
from test_recovery import runtime  # noqa: F401 - real parts that outlive a gateway
