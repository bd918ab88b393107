"""Fine-tuning support: data sets and splits (:mod:`.data`), losses (:mod:`.losses`) and batch
augmentations (:mod:`.augment`).

The split code exists because the recipe this project replaces drew its validation set independently
of its training set (spec §7.2), so most "validation" files were training files. Here every split is
one deterministic partition, by recording group when the data has groups, and
:func:`~eat_keras.train.data.check_no_leakage` verifies it down to the file bytes.
"""
