"""Synthetic data sets as a product (configs/dataset.json): the plan of labelled prompts, the filters and their
classifiers, the writer that records non-finite images, scoring and Parquet shards by blocks, the data-set card,
and the utility workflow (configs/dataset_utility.json)."""
