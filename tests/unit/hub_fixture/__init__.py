"""Tests of the local Hugging Face Hub fixture."""
