"""Curation: dedup, IFD filtering, decontamination, heuristic filters, selection and mixing.

Each part is a pipeline stage and a CLI verb; what a filter removes goes to ``dropped/`` with its
reason.
"""
