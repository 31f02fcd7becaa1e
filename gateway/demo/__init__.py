"""``meridian demo``: two regions of one domain and a federated third domain on one machine."""
