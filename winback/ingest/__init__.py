"""Ingest: the input contract and the loader that enforces it on the landing files.

``contract`` (tables, columns, code lists, length bounds), ``loader`` (``load_day``, which
runs the steps below), ``read`` (files, headers, blocks, malformed lines), ``validate``
(the screen and the reference checks), ``references`` (duplicate keys, unknown
references), ``write`` (COPY), ``quarantine`` (``raw.quarantine``, ``raw.load_batches``),
``phones`` (E.164).
"""
