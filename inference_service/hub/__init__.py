"""Downloads from the Hugging Face Hub: file listing, resumable transfer, integrity."""
