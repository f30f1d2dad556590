"""The shop's functions, in one Python component.

Every function of the shop is this component deployed under its own name with the
configuration value ``ROLE`` naming what it does, so the app builds once and each
deploy after the first reuses the compiled code. Each role is a module with a
``handle(events)``: those of this directory, and the revenue projection from
``examples/projections/order-totals``.
"""

from sluice import config

import enrich
import fulfil
import inventory
import notify
import orders
import order_totals
import payment
import shipping
import status

ROLES = {
    "orders": orders.handle,
    "notify": notify.handle,
    "fulfil": fulfil.handle,
    "inventory": inventory.handle,
    "payment": payment.handle,
    "shipping": shipping.handle,
    "enrich": enrich.handle,
    "status": status.handle,
    "revenue": order_totals.handle,
}


def handle(events):
    role = config.get("ROLE")
    if role not in ROLES:
        raise RuntimeError(f"ROLE is {role!r}; set it to one of {sorted(ROLES)}")
    return ROLES[role](events)
