"""The circuit breaker's rules (``proxy/circuit.py``), on a clock the test moves; how upstreams
and the bucket feed it is tested in test_upstream_circuit.py and test_storage_s3.py."""

from __future__ import annotations

from proxy.circuit import CLOSED, HALF_OPEN, OPEN, Circuit


def test_circuit_rules():
    now = [0.0]
    circuit = Circuit(failures=2, cooldown=10, clock=lambda: now[0])
    assert circuit.admit() and not circuit.failed("timed out")
    circuit.succeeded()  # an answer resets the count: failures must come in a row
    assert not circuit.failed("timed out") and circuit.failed("timed out")
    assert circuit.state == OPEN and not circuit.admit() and circuit.retry_in() == 10
    now[0] = 10
    assert circuit.state == HALF_OPEN
    assert circuit.admit() and not circuit.admit()  # one probe at a time
    circuit.abandoned()  # the probe was cancelled: the next request probes
    assert circuit.admit()
    assert circuit.failed("refused") and circuit.state == OPEN
    now[0] = 20
    assert circuit.admit()
    circuit.succeeded()
    assert circuit.state == CLOSED and circuit.admit() and circuit.admit()
    off = Circuit(failures=0, cooldown=10)
    assert not any(off.failed("x") for _ in range(10)) and off.admit()
