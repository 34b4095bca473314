"""The experiment configs (one file each) and their shared recipe pieces (common.py)."""
