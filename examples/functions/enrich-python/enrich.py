"""Order enrichment, in Python.

Input events are orders ``{"order_id", "customer", "items": [{"sku", "qty", "price"}]}``
or tier updates ``{"customer", "tier"}``. For an order the function reads the
customer's tier from its own key-value state, computes the total with the
``TAX_RATE`` configuration value, counts the customer's orders, and publishes
an ``order.enriched`` event to the topic named by ``OUT_TOPIC``. An order with
no items fails on its own (partial batch failure) and is retried, then
dead-lettered with the reason. Everything it writes and publishes commits
atomically with the acknowledgement of the batch.
"""

from sluice import config, kv, log, publish


def handle(events):
    out = config.get("OUT_TOPIC", "orders-enriched")
    tax = float(config.get("TAX_RATE", "0"))
    failed = {}
    for e in events:
        data = e.data
        if "tier" in data:
            kv.set(f"tier:{data['customer']}", data["tier"])
            continue
        if not data.get("items"):
            failed[e.id] = f"order {data.get('order_id')} has no items"
            continue
        subtotal = sum(i["qty"] * i["price"] for i in data["items"])
        total = round(subtotal * (1 + tax), 2)
        tier = (kv.get("tier:" + data["customer"]) or b"standard").decode()
        # Count the customer's orders. If another invocation changed the count
        # since it was read, fail the batch: it runs again and reads anew. (On
        # a FIFO queue grouped by customer that never happens.)
        key = "orders:" + data["customer"]
        current = kv.get(key)
        count = int(current or b"0") + 1
        if not kv.compare_and_set(key, current, str(count)):
            raise RuntimeError(f"{key} changed concurrently")
        publish(out, "order.enriched", {
            "order_id": data["order_id"],
            "customer": data["customer"],
            "tier": tier,
            "total": total,
            "order_number": count,
        }, subject=data["order_id"])
        log(f"order {data['order_id']}: {total} ({tier})")
    return failed
