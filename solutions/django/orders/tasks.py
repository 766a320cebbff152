"""The background work of an order, found by ``app.autodiscover_tasks()``."""

import httpx
from celery import shared_task
from django.conf import settings

from .models import Order, Shipment


@shared_task(autoretry_for=(httpx.HTTPError,), max_retries=3, default_retry_delay=0)
def fulfil_order(order_id: int) -> dict:
    order = Order.objects.get(pk=order_id)  # read when it runs: fresh, and only the id travelled
    # Why: a retry (the warehouse failed) or a second delivery runs all of this again: get_or_create,
    # backed by the unique constraint, writes the shipment once.
    Shipment.objects.get_or_create(order=order)
    Order.objects.filter(pk=order.pk).update(status="shipped")
    response = httpx.post(settings.WAREHOUSE_URL, json={"order": order.pk}, timeout=2.0)
    response.raise_for_status()  # a 5xx from the warehouse: retried
    return {"order": order.pk, "customer": order.customer, "status": "shipped"}
