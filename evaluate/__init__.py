"""`talkcurate evaluate`: score generated talking-portrait video with the models that curate the data."""
