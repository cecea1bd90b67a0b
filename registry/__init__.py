"""The model registry: what a model is, its versions, artifacts and aliases."""
