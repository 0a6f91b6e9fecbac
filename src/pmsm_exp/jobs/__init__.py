"""What train.py and convert.py run: the job wrapper, the config checks, the builders of model,
data and trainer, and the train and convert pipelines."""
