"""Transfer Lab's Hydra plugins (this folder joins Hydra's `hydra_plugins` namespace package:
pipeline/sweeps/sequential_options.py, expose_plugin)."""
