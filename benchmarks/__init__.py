"""Speed and quality benchmarks: `python -m benchmarks` (add `--smoke` for a quick check)."""
