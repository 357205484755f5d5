"""The demo's inference app: batched tasks, JSON API views and a page to try them."""
