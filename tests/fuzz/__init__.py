"""Fuzz tests: property tests of every codec and state machine, and one server-level run.

The properties live in :mod:`tests.fuzz.targets`, shared with the long-run harness
``bench/fuzz.py`` (atheris), so CI and the long runs check the same thing.
"""
