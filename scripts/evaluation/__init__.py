"""Evaluation: sample-set plan, metrics (MS-SSIM, diversity, FID, adherence), the report, and the workflow."""
