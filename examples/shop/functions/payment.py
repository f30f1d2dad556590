"""Payment, the checkout saga's second step: charges an order's amount and declines
amounts over ``LIMIT`` (configuration, default 500). Input: ``{"order", "amount"}``.

A declined charge fails the step; the saga then releases the stock it reserved.
"""

from once import first_time
from sluice import config, kv, publish


def handle(events):
    limit = float(config.get("LIMIT", "500"))
    for e in events:
        # A declined charge fails the invocation, which commits none of its writes: the
        # key is recorded only for charges that went through.
        if not first_time(e):
            continue
        d = e.data
        if d["amount"] > limit:
            raise RuntimeError(f"declined: {d['amount']} is over the limit of {limit}")
        kv.set("charged:" + d["order"], d["amount"])
        publish("orders", "order.charged", subject=d["order"],
                data={"order": d["order"], "amount": d["amount"]})
