"""Payment for the checkout saga, in Python: charges an order's amount, and declines
amounts over ``LIMIT`` (configuration, default 500). Input: ``{"order", "amount"}``.

A repeated attempt (same idempotency key) does nothing again.
"""

from sluice import config, kv, log


def handle(events):
    limit = float(config.get("LIMIT", "500"))
    for e in events:
        key = "k:" + e.extensions["idempotencykey"]
        # A declined attempt commits nothing, its log line stays: the attempt is on record.
        log("attempt " + key)
        if kv.exists(key):
            continue
        kv.set(key, "1")
        if e.data["amount"] > limit:
            raise RuntimeError(f"declined: {e.data['amount']} is over the limit of {limit}")
        kv.set("charged:" + e.data["order"], e.data["amount"])
