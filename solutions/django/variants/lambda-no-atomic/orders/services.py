"""Variant: no transaction of its own (autocommit: the create commits at once) and a lambda with the
id as a keyword; on_commit runs it at once outside a transaction, after the caller's commit inside one."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    order = Order.objects.create(customer=customer, total_cents=total_cents)
    order_id = order.pk
    transaction.on_commit(lambda: fulfil_order.delay(order_id=order_id))
    return order
