"""Mutant (enqueue-on-commit): place_order sends after its own atomic block. Called on its own that is
after the commit; inside a caller's transaction (ATOMIC_REQUESTS) it is before it, and survives a rollback."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
    fulfil_order.delay(order.id)  # after its own block: still inside a transaction the caller holds open
    return order
