"""Adapters that run PruneVid inside other tools (lmms-eval); each imports its tool only when used."""
