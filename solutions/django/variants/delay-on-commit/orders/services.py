"""Variant: Celery 5.4+'s DjangoTask.delay_on_commit, which Celery's Django fix-up makes every
@shared_task have; the task writes with update_or_create."""

from django.db import transaction

from .models import Order
from .tasks import fulfil_order


def place_order(customer: str, total_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total_cents=total_cents)
        fulfil_order.delay_on_commit(order.id)  # DjangoTask (the fix-up's task class): on_commit + delay
    return order
