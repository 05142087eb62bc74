"""The causal LM: checkpoint loading, checkpoint layouts, tokenisation, the embedded tiny model."""
