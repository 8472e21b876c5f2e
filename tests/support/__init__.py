"""Helpers shared by tests of several packages (on sys.path via pytest's `pythonpath`)."""
