"""Job entrypoints: ``python -m jobs.<stage>`` locally or ``ray job submit -- python -m jobs.<stage>`` on a cluster."""
