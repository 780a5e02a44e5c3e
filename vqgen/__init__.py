"""The shared core of vqgen: what every stage uses and no stage owns.

Owns: the data layer (`vqgen.data`: dataset specs, sources and their SOURCES registry, splits, transforms),
the training loop both stages run (progress, evaluation cadence, metrics, checkpoints, signals, resume,
save and push), atomic writes and checksummed checkpoints, the save/load/push mechanism and model card of
every model, command lines built from config dataclasses, input validation, the sampling-settings type,
image grids and image metrics.

May import: third-party libraries (torch, the Hugging Face stack, PIL, numpy) and the standard library;
never stage1_tokenizer, stage2_prior or pipelines. Dependencies point one way: pipelines -> stage2_prior ->
stage1_tokenizer -> vqgen (docs/architecture.md).
"""
