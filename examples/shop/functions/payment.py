"""Payment, the checkout saga's second step: charges an order's amount and declines
amounts over ``LIMIT`` (configuration, default 500). Input: ``{"order", "amount"}``.

A declined charge fails the step; the saga then releases the stock it reserved.
"""

from sluice import config, kv, publish


def handle(events):
    limit = float(config.get("LIMIT", "500"))
    for e in events:
        key = "k:" + e.extensions["idempotencykey"]
        if kv.exists(key):
            continue
        d = e.data
        if d["amount"] > limit:
            raise RuntimeError(f"declined: {d['amount']} is over the limit of {limit}")
        kv.set(key, "1")
        kv.set("charged:" + d["order"], d["amount"])
        publish("orders", "order.charged", subject=d["order"],
                data={"order": d["order"], "amount": d["amount"]})
