"""Mutant (retry-safe-writes): a transaction around create + warehouse call makes a retry after a failed
call safe, but a second delivery of a run that succeeded hits the unique constraint and fails."""

import httpx
from celery import shared_task
from django.conf import settings
from django.db import transaction

from .models import Order, Shipment


@shared_task(autoretry_for=(httpx.HTTPError,), max_retries=3, default_retry_delay=0)
def fulfil_order(order_id: int) -> dict:
    order = Order.objects.get(pk=order_id)  # read when it runs: fresh, and only the id travelled
    with transaction.atomic():  # a failed warehouse call rolls the shipment back, but a second delivery...
        Shipment.objects.create(order=order)
        Order.objects.filter(pk=order.pk).update(status="shipped")
        response = httpx.post(settings.WAREHOUSE_URL, json={"order": order.pk}, timeout=2.0)
        response.raise_for_status()  # a 5xx from the warehouse: retried
    return {"order": order.pk, "customer": order.customer, "status": "shipped"}
