"""Running workers: one per GPU (``launcher.py``), device pinning (``devices.py``), the CLI (``cli.py``)."""
