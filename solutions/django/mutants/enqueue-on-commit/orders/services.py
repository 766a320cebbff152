"""Mutant (enqueue-on-commit): place_order calls fulfil_order.delay() inside its atomic block, before the
commit, so a quick worker reads Order.DoesNotExist and a rollback still sends the task."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        fulfil_order.delay(order.id)  # inside the transaction: a worker may run it before the commit
    return order
