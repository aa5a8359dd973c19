"""Runtime: data pipeline, training loop, search, tracking, cluster and job plumbing, analysis."""
