"""K-fold cross-validation of a radfusion configuration beside classical baselines
(`radfusion cv`): every model is fitted on the same outer training part of each fold,
with the same features (the data module's arrays after its missing-data policy), and
scored on the same held-out fold, so the table's paired differences compare like with
like.

- ``fold``: one (repeat, fold): fit the configured network (checkpoint chosen on the
  inner validation split), predict the held-out fold, fit and predict each baseline;
- ``baselines``: the classical models (scikit-learn, scikit-survival, lifelines);
- ``metrics``: per-fold, pooled and paired metrics with confidence intervals;
- ``table``: cv.json and cv.md from the folds' results;
- ``run``: the folds across processes and the files they leave;
- ``command``: the ``radfusion cv`` arguments;
- ``holdout``: the same baselines on one train/test split, beside the deep models of
  ``radfusion evaluate``, with paired bootstrap differences;
- ``verdict``: what a paired difference says, in words (where the network loses)."""
