"""Mutant (enqueue-on-commit): the countdown hack. The message is still published inside the
transaction; a second later the commit has usually happened, but not always, and a rollback still sends it."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        fulfil_order.apply_async((order.id,), countdown=1)  # "by then it has committed": only hides the race
    return order
