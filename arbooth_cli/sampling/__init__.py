"""Next-scale sampling: logit filters, the KV-cached sampler, and image writers."""
