"""The archive scorer, piece by piece (``radfusion.serving.scoring.score.score_archive`` puts them together).

- ``sources``: where studies come from (folder tree, zip archives, DICOMweb) and how
  one study's files are brought to local disk for the shared preprocessing.
- ``prepare``: the per-study function (fetch, read, preprocess) run in worker processes
  or Ray tasks.
- ``inference``: batched ONNX Runtime inference that fills the rows.
- ``rows``: the output schema, one row per study.
- ``writer``: Parquet in committed part files, resume bookkeeping, final compaction.
- ``local_engine`` / ``ray_engine``: the two ways of running the same functions.
- ``progress``: a bar on a terminal, plain log lines otherwise.
"""
