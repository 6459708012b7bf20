"""Bulk jobs (asynchronous `$import`, CLI loads, hospital pulls) and the queues that run them."""
