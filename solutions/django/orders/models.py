"""An order, and the shipment that fulfils it."""

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    total_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=20, default="new")


class Shipment(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="shipments")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Why: one shipment per order, kept by the database even if two runs of fulfil_order race.
        constraints = [models.UniqueConstraint(fields=["order"], name="one_shipment_per_order")]
