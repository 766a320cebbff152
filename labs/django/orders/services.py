"""What the shop's views call: place an order, and have it fulfilled in the background."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        fulfil_order.delay(order)  # TODO: only once the transaction has committed, and the id, not the order
    return order
