"""The model cache: what is downloaded, its state on disk, and downloads into it."""
