"""Analyses of models and tuned subjects (`arbooth inspect`): per-scale noise injection, weight changes."""
