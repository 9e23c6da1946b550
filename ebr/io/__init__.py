"""On-disk formats: raw vector files, the index manifest, BEIR directories, the text encoder."""
