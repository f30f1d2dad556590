"""Shipping for the checkout saga, in Python: records that an order shipped.
Input: ``{"order"}``. A repeated attempt (same idempotency key) does nothing again.
"""

from sluice import kv


def handle(events):
    for e in events:
        key = "k:" + e.extensions["idempotencykey"]
        if kv.exists(key):
            continue
        kv.set(key, "1")
        kv.set("shipped:" + e.data["order"], "1")
