"""Evaluation: sample-set plan, metrics (MS-SSIM, diversity, FID, KID, PRDC, adherence), feature extractors,
per-pathology groups, the memorisation check, benchmark sets, the report, and the workflow that runs the named
metrics (``sections.METRICS``) on one shared context (``context.EvaluationContext``)."""
