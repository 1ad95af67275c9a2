"""Wharf: a pull-through caching proxy, mirror and registry for OCI / Docker images."""

__version__ = "0.1.0"
