"""Helpers that run real servers for the tests (nginx, small HTTP stand-ins)."""
