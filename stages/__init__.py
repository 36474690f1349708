"""Built-in stages, one per module; each registers under the `streamflow.stages` entry-point group."""
