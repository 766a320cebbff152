"""The background work of an order, found by ``app.autodiscover_tasks()``."""

import httpx
from celery import shared_task
from django.conf import settings

from .models import Order, Shipment


@shared_task(autoretry_for=(httpx.HTTPError,), max_retries=3, default_retry_delay=0)
def fulfil_order(order: Order) -> dict:  # TODO: take the order's id (an int) and read the order here
    Shipment.objects.create(order=order)  # TODO: a retry or a second delivery must not write a second one
    Order.objects.filter(pk=order.pk).update(status="shipped")
    response = httpx.post(settings.WAREHOUSE_URL, json={"order": order.pk}, timeout=2.0)
    response.raise_for_status()  # a 5xx from the warehouse: retried
    return {"order": order.pk, "customer": order.customer, "status": "shipped"}
