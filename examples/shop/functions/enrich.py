"""The data pipeline's first stage: every event of the ``orders`` topic, with the
products' names from the catalog (configuration ``CATALOG``: ``sku=Name,...``) and a
line a person can read, republished on ``orders-enriched``.
"""

from sluice import config, publish


def catalog():
    names = {}
    for pair in config.get("CATALOG", "").split(","):
        if "=" in pair:
            sku, name = pair.split("=", 1)
            names[sku.strip()] = name.strip()
    return names


def handle(events):
    names = catalog()
    for e in events:
        d = dict(e.data)
        if "items" in d:
            d["items"] = [dict(i, name=names.get(i["sku"], i["sku"])) for i in d["items"]]
            d["summary"] = ", ".join(f"{i['qty']} × {i['name']}" for i in d["items"])
        publish("orders-enriched", e.type, subject=e.subject, data=d)
