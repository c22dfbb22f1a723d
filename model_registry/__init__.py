"""What the coordinator and the silo agent share about models: the registry of model architectures
(named by the trial, never shipped as code), the one model artifact format and the data schema."""
