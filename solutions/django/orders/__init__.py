"""The shop's one app: orders, their shipments, and the task that fulfils an order."""
