"""Clients for remote registries."""
