"""Images in, arrays out: labelled image folders as datasets, even sampling, and where the shipped data lives."""
