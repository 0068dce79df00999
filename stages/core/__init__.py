"""Shared logic of the dreamprune stages: one module per concern."""
