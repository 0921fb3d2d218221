"""Plumbing shared by every stage, each written once: errors, atomic files, hashing, distributed runs, progress."""
