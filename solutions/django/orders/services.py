"""What the shop's views call: place an order, and have it fulfilled in the background."""

from functools import partial

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        # Why: on_commit sends only once the outermost transaction has committed (never after a rollback), so
        # the worker always finds the row; and the message carries the id (JSON), the task reads the order.
        transaction.on_commit(partial(fulfil_order.delay, order.id))
    return order
