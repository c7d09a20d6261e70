import threading

import pytest

from connector.sync.prefetch import Prefetcher


def test_items_arrive_in_order():
    p = Prefetcher(iter(range(50)), depth=2)
    assert list(p) == list(range(50))
    p.close()


def test_producer_error_reaches_the_consumer_after_earlier_items():
    def produce():
        yield 1
        yield 2
        raise RuntimeError("page 3 failed")

    p = Prefetcher(produce())
    seen = []
    with pytest.raises(RuntimeError, match="page 3"):
        for item in p:
            seen.append(item)
    assert seen == [1, 2]
    p.close()


def test_close_stops_a_blocked_producer():
    produced = threading.Event()

    def endless():
        i = 0
        while True:
            produced.set()
            yield i
            i += 1

    p = Prefetcher(endless(), depth=1)
    assert produced.wait(5)
    p.close()
    assert not p._thread.is_alive()
