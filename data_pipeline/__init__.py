"""Hindsight-Curation on Ray Data: builds Video-Thinker-style SFT traces and RL samples from source datasets."""
