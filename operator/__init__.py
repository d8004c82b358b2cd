"""Graven Kubernetes operator (kopf handlers and pure render functions)."""
