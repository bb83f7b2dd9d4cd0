"""Event pushes: real-time fan-out to WebSocket clients, durable history POSTs."""
