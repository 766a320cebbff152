"""Variant: the service sends with DjangoTask.apply_async_on_commit (args as a tuple)."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        fulfil_order.apply_async_on_commit(args=(order.pk,))
    return order
