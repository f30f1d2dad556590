"""Idempotency for the checkout saga's steps: every call carries an idempotency key
(the ``idempotencykey`` attribute: saga, step and attempt), and a key seen before must do
nothing again, so an attempt Sluice repeats after a crash takes effect once.
"""

from sluice import kv


def first_time(event):
    """Whether this call's key is new; records it (with the invocation's other writes)."""
    key = "k:" + event.extensions["idempotencykey"]
    if kv.exists(key):
        return False
    kv.set(key, "1")
    return True
