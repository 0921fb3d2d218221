"""Getting the bundle and its weights: large-file downloads, the release zip, the tokenizer files."""
