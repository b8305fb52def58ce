"""The API's routers, one module per resource; ``metrics.api.app`` mounts them."""
