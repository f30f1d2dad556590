"""Inventory for the checkout saga, in Python: reserves stock for an order, and releases it
(the step's compensation). Input: ``{"op": "reserve"|"release", "order", "items": [{"sku",
"qty"}]}``.

Every call carries an idempotency key (the ``idempotencykey`` attribute: saga, step and
attempt). A call whose key was seen before does nothing again, so an attempt Sluice repeats
after a crash takes effect once. Stock is kept per SKU in this function's state, starting
at 100; reservations per order, so a release gives back exactly what was taken.
"""

from sluice import kv, log


def handle(events):
    for e in events:
        key = "k:" + e.extensions["idempotencykey"]
        if kv.exists(key):
            log(f"{key} already done")
            continue
        kv.set(key, "1")
        data = e.data
        order = data["order"]
        if data["op"] == "reserve":
            taken = {}
            for item in data.get("items", []):
                stock = kv.get_json("stock:" + item["sku"], 100)
                if stock < item["qty"]:
                    raise RuntimeError(f"{item['sku']}: {stock} left, {item['qty']} wanted")
                kv.set("stock:" + item["sku"], stock - item["qty"])
                taken[item["sku"]] = taken.get(item["sku"], 0) + item["qty"]
            kv.set("reserved:" + order, taken)
        elif data["op"] == "release":
            taken = kv.get_json("reserved:" + order, {})
            for sku, qty in taken.items():
                kv.set("stock:" + sku, kv.get_json("stock:" + sku, 100) + qty)
            kv.delete("reserved:" + order)
            kv.set("released:" + order, "1")
