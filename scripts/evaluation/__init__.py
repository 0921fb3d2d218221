"""Evaluation: sample-set plan, metrics (MS-SSIM, diversity, FID, KID, PRDC, adherence), feature extractors,
per-pathology groups, the memorisation check, benchmark sets, the report, and the workflow."""
