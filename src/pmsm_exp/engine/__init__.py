"""Lightning glue: the training and evaluation LightningModules, callbacks, preemption, loggers
and the GPU switches (channels_last, torch.compile, evaluation precision)."""
