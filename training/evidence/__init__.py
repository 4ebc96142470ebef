"""Evidence behind a prediction, each analysis checked against the synthetic truth:

- attribution: which genes drive the predictions (captum Integrated Gradients, with
  feature ablation for comparison, and the ranking's stability across folds);
- saliency: where in the image (MONAI occlusion sensitivity), mapped back into the
  source DICOM series' geometry;
- stratify: risk groups with Kaplan-Meier curves and log-rank tests, and clusters of
  the fused embeddings against known subtypes;
- treatment: the response predicted under every candidate treatment, ranked;
- calibration and subgroups: reliability, ECE, temperature scaling, per-group metrics
  with bootstrap confidence intervals.

All of it runs on a trained checkpoint through FusionNet's public interface
(``forward``, ``embeddings``, ``modality_names``, ``omics_sizes``), so it works
for every fusion strategy."""
