"""Section 2.1 of the paper: preparing the pre-training data on datatrove.

``python -m llama_jax.prepare --config=configs/prepare/<source>.py
--config.input=GLOB --config.output=DIR`` runs one source's cleaning stages
(CCNet for CommonCrawl; the C4, GitHub, Wikipedia, Books, ArXiv and
StackExchange rules) as a datatrove pipeline on its local, Slurm or Ray
executor. `stage` holds the interface every stage implements and the
registry of stage names.
"""
