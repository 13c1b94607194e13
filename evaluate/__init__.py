"""Scoring generated (or real) talking-portrait videos with the models that curate the data (`talkcurate evaluate`)."""
