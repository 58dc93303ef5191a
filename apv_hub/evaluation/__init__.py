"""Evaluation: deterministic episodes of an agent and their score (``episodes``)."""
