"""Fault injection for reliability tests: real processes, real crashes, at named points."""
