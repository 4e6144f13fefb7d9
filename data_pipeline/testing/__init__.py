"""Test helpers for the curation pipeline: a scripted OpenAI-compatible server."""
