import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from srsd.rewrite import FOUND, NOTFOUND, TEMP, Answer


class Lookups:
    """A scripted lookup: keys map to answers; "boom" raises; "slow:*" defers."""

    def __init__(self):
        self.calls = []
        self.pending = {}

    def __call__(self, map_name, key):
        self.calls.append((map_name, key))
        if key == "boom":
            raise RuntimeError("bug")
        if key.startswith("slow:"):
            d = Deferred()
            self.pending[key] = d
            return d
        if key.startswith("temp"):
            return Answer(TEMP, "dns down")
        if "@" in key and not key.startswith("local"):
            return Answer(FOUND, f"{map_name.upper()}({key})")
        return Answer(NOTFOUND, "no")


@pytest.fixture
def lookups():
    return Lookups()


def connect(factory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport
