"""The shared core of vqgen: what every stage uses and no stage owns.

Atomic writes, the save/load/push mechanism, checkpoints and the training-loop skeleton, the data
layer, input validation, image grids and image metrics. Dependencies point one way:
pipelines -> stage2_prior -> stage1_tokenizer -> vqgen.
"""
