"""Fine-tuning: data sets and splits (:mod:`.data`), the run's settings (:mod:`.config`), the loss
terms as a table (:mod:`.loss_table`) and their implementations (:mod:`.losses`), batch
augmentations (:mod:`.augment`), the training loop (:mod:`.fit`) and evaluation (:mod:`.evaluate`,
:mod:`.metrics`).

Every split is one deterministic partition, by recording group when the data has groups, and
:func:`~eat_keras.train.data.check_no_leakage` verifies it down to the file bytes: a validation set
drawn independently of the training set would mostly hold training files.
"""
