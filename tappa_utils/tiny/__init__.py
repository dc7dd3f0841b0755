"""The making of the default model `tappa-tiny`: its corpus, byte tokenizer, training and model card.

`corpus` (the stdlib text and the synthetic mixtures), `tokenizer` (bytes + three specials), `train`
(`python -m tappa_utils train-tiny`), `card` (`python -m tappa_utils model-card`). Nothing in the analysis core
imports this package; a model of any supported family can replace `tappa-tiny` in every chapter.
"""
