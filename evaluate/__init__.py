"""`talkcurate evaluate`: score generated (or real) talking-portrait videos with the models that curate the data."""
