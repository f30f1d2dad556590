"""Order totals: a projection over the ``order`` category, in Python.

Each order is an event-store stream ``order-<id>`` with events:

- ``order.placed``    data ``{"customer", "items": [{"sku", "qty", "price"}]}``
- ``order.cancelled`` data ``{}``

The projection keeps, in its key-value state:

- ``order:<stream>``   the order's total and status, JSON
- ``revenue:<sku>``    revenue per product from orders not cancelled
- ``orders``           how many orders are placed and not cancelled
- ``events``           how many events it folded: each exactly once, so this
                       equals the number of events in ``order-*`` streams

Sluice hands it each stream's events in order, one invocation at a time, and
commits what it writes together with its checkpoint: every event is folded
exactly once, across crashes and restarts. ``sluice projection rebuild`` folds
everything again from an empty state and ends where the incremental run did.
"""

from sluice import kv, log


def handle(events):
    # Read each key once, fold the whole batch in memory, write each key once.
    cache = {}

    def get(key, default):
        if key not in cache:
            cache[key] = kv.get_json(key, default)
        return cache[key]

    def put(key, value):
        cache[key] = value

    for e in events:
        put("events", get("events", 0) + 1)
        stream = e.extensions["stream"]
        order = get("order:" + stream, None)
        if e.type == "order.placed":
            if order is not None:
                log(f"{stream}: placed twice; ignoring the second", "warn")
                continue
            items = e.data.get("items", [])
            lines = {}
            for i in items:
                lines[i["sku"]] = lines.get(i["sku"], 0) + i["qty"] * i["price"]
            total = round(sum(lines.values()), 2)
            put("order:" + stream, {"total": total, "status": "placed",
                                    "lines": lines,
                                    "customer": e.data.get("customer")})
            for sku, amount in lines.items():
                put("revenue:" + sku, round(get("revenue:" + sku, 0) + amount, 2))
            put("orders", get("orders", 0) + 1)
        elif e.type == "order.cancelled":
            if order is None or order["status"] != "placed":
                continue
            for sku, amount in order["lines"].items():
                put("revenue:" + sku, round(get("revenue:" + sku, 0) - amount, 2))
            order = dict(order, status="cancelled")
            put("order:" + stream, order)
            put("orders", get("orders", 0) - 1)

    for key, value in cache.items():
        if value is not None:
            kv.set(key, value)
