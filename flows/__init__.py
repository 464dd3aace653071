"""Prefect flows: the order and schedule of DVC stages and registry actions."""
