"""The paper's analyses, regenerated from our own samplers and pipelines (Sec. 3)."""
