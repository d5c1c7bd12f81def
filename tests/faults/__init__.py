"""The fault suite: hostile peers, hostile applications, random runs.

A package (tests/ itself is not one) so that its conftest and helpers do not
collide with tests/conftest.py; run it alone with
``python -m pytest tests/faults``.  See docs/guarantees.md.
"""
