"""`make bench`: throughput and latency measured as ratios against references in the same run."""
