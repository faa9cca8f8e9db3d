"""`make bench`: the same closed-loop load straight at vLLM and through the gateway, in one run."""
