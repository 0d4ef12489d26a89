"""Sweeps (Hydra multirun): the callbacks that make a sweep's MLflow run and ready its store
(callbacks.py), what a job knows of its sweep (job.py), stopping a sweep as a whole (stop.py) and
resuming one (resume.py). Imports nothing here: each job imports only what it needs."""
