"""Action spaces: one `Mode` per way the policy acts (`base.py` the protocol; `item.py` a
distribution over the closed candidate list; `text.py` sampled completions, list or catalogue)."""
